"""Convert an official dataset format to MDS shards: ``xfm data prepare`` from a checkout.

python tools/prepare/prepare.py {xvlm,coco-karpathy,vg-regions,coco-regions,imagefolder,text} ...
"""

import sys

from xfm.core.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["data", "prepare", *sys.argv[1:]]))
