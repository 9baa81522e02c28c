"""Cross-check this harness against the SHARED golden sets (made by the original oracle scripts).

Rebuilds each official model with the shared sets' dimensions, loads the shared
``model.safetensors`` (strict), runs this harness's ``compute`` on the shared inputs and prints the
max abs difference to the shared outputs (float noise of another machine, ~1e-6; integer outputs
must be equal). For pretraining it also re-randomises a fresh model with the shared seed and checks
that the weights equal the shared ``model.safetensors`` bit for bit (same recipe, same order), and
compares ``gradient_routing.json`` (as sets). The shared task sets were made by executing the
official ``Retrieval.py`` / ``VQA.py`` evaluation source, so agreement here validates the
evaluation semantics implemented in ``retrieval_set.py`` / ``vqa_set.py``::

    python tools/golden/crosscheck_shared.py [--shared ../shared] [--official DIR]

Exit 0 when every float output is within 1e-5 and every integer output is equal, else 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
TOL = 1e-5


def _compare(name: str, ref: dict, out: dict) -> bool:
    if set(ref) != set(out):
        print(f"{name}: output names differ: {sorted(set(ref) ^ set(out))}")
        return False
    worst = max(float((ref[k].double() - out[k].double()).abs().max()) for k in ref)
    ints = all(bool((ref[k] == out[k]).all()) for k in ref if not ref[k].is_floating_point())
    print(f"{name}: max |diff| = {worst:.3g}, integer outputs equal: {ints}")
    return worst <= TOL and ints


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared", help="shared folder")
    ap.add_argument(
        "--official",
        type=Path,
        default=None,
        help="official code (default: SHARED/official_bench/official)",
    )
    args = ap.parse_args(argv)
    sys.path.insert(0, str(HERE))
    from official_harness import add_official_to_path, rerandomise, state_dict_copies

    try:
        add_official_to_path(args.official or args.shared / "official_bench" / "official")
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    import other_dims
    import pretrain_set
    import retrieval_set
    import task_descriptions as td
    import task_sets
    import torch
    import vqa_set
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    ok = True

    # pretraining: dims of ../shared/golden/config.json
    pretrain_set.D = other_dims.Dims(
        image_res=32, patch=8, vision_width=48, vision_layers=2, vision_heads=4, mlp_ratio=4,
        vocab=300, text_width=48, text_layers=2, text_heads=4, text_ffn=128, max_positions=40,
        embed_dim=24,
    )  # fmt: skip
    pretrain_set.FUSION_LAYERS, pretrain_set.PRETRAIN_SEED = 2, 1234
    golden = args.shared / "golden"
    state = load_file(str(golden / "model.safetensors"))
    fresh = pretrain_set.build()
    rerandomise(fresh, 1234 + 1)
    same = state_dict_copies(fresh)
    bitwise = set(same) == set(state) and all(torch.equal(same[k], state[k]) for k in state)
    print(f"pretrain: re-randomised weights equal the shared model bit for bit: {bitwise}")
    ok &= bitwise
    model = pretrain_set.build()
    model.load_state_dict(state, strict=True)
    inputs = load_file(str(golden / "inputs.safetensors"))
    ok &= _compare(
        "pretrain",
        load_file(str(golden / "outputs.safetensors")),
        pretrain_set.compute(model, inputs),
    )
    routing = pretrain_set.gradient_routing(model, inputs)["losses"]
    want = json.loads((golden / "gradient_routing.json").read_text())["losses"]
    same_routing = all(
        set(routing[k]["params_with_nonzero_grad"]) == set(want[k]["params_with_nonzero_grad"])
        for k in want
    )
    print(f"pretrain: gradient routing equal (as sets): {same_routing}")
    ok &= same_routing

    # tasks: dims of ../shared/golden_tasks/*/config.json
    dims = other_dims.Dims(
        image_res=32, patch=8, vision_width=32, vision_layers=2, vision_heads=4, mlp_ratio=4,
        vocab=160, text_width=32, text_layers=2, text_heads=4, text_ffn=64, max_positions=40,
        embed_dim=16,
    )  # fmt: skip
    for module in (td, retrieval_set, vqa_set, task_sets):
        module.D = dims
    oc = td.official_config
    retrieval_set.CONFIG = oc(
        2,
        2,
        embed_dim=16,
        temp=0.07,
        k_test=4,
        max_tokens=12,
        batch_size_test=4,
        batch_size_test_text=5,
    )
    vqa_set.CONFIG = oc(
        2, 2, num_dec_layers=2, decoder_fusion_start_at=0, k_test=5, pad_token_id=1, max_tokens=40
    )
    task_sets.NLVR_CONFIG = oc(2, 2)
    task_sets.GROUNDING_CONFIG = oc(2, 2, max_tokens=40)
    task_sets.GLUE_CONFIG = oc(2, 0, task_name="mnli", num_labels=3, use_xbrain=True)
    task_sets.IMAGENET_CONFIG = oc(0, 0, task_name="imagenet", num_labels=10, smoothing=0.1)
    tasks: dict[str, tuple[Callable, Callable]] = {
        "retrieval": (retrieval_set.build, retrieval_set.compute),
        "nlvr": (task_sets.nlvr_build, task_sets.nlvr_compute),
        "grounding": (task_sets.grounding_build, task_sets.grounding_compute),
        "vqa": (vqa_set.build, vqa_set.compute),
        "classification_glue": (task_sets.glue_build, task_sets.glue_compute),
        "classification_imagenet": (task_sets.imagenet_build, task_sets.imagenet_compute),
    }
    for name, (build, compute) in tasks.items():
        d = args.shared / "golden_tasks" / name
        model = build()
        model.load_state_dict(load_file(str(d / "model.safetensors")), strict=True)
        out = compute(model, load_file(str(d / "inputs.safetensors")))
        ok &= _compare(name, load_file(str(d / "outputs.safetensors")), out)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
