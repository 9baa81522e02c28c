"""``xfm search --images DIR "query"``: rank a folder of images for a text (beyond the official
code). The same two stages as the retrieval evaluation: ITC similarity over every image, then
the top ``--rerank`` images re-scored by ITM (each image's cross-attention K/V computed once).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from xfm.core.cli import Command
from xfm.fusion.contract import EncoderContractError, check_encoder

__all__ = ["SearchCommand", "SearchHit", "search_images"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp")


@dataclass
class SearchHit:
    """One ranked image: ``itm`` is None for images outside the re-ranked top-k."""

    path: str
    itc: float
    itm: float | None


@torch.no_grad()
def search_images(
    model: nn.Module,
    tokenizer: Any,
    paths: list[Path],
    query: str,
    *,
    image_size: int,
    rerank: int = 16,
    batch_size: int = 32,
    max_tokens: int = 40,
) -> list[SearchHit]:
    """Every image of ``paths`` ranked for ``query``: re-ranked ones first (by ITM logit),
    then the rest by ITC similarity."""
    from xfm.tasks.base_data import ImageReader, tokenize
    from xfm.tasks.retrieval import itm_scores

    if not paths:
        raise ValueError("no images to search")
    device = next(model.parameters()).device
    reader = ImageReader(Path.cwd(), image_size)  # relative paths: from the working directory
    ids, mask = tokenize(tokenizer, [query], max_tokens)
    ids, mask = ids.to(device), mask.to(device)
    text = model.encode_text(ids, mask)
    text_feat = nn.functional.normalize(model.text_proj(text[:, 0]), dim=-1)
    states, sims = [], []
    for start in range(0, len(paths), batch_size):
        batch = torch.stack([reader(str(p))[0] for p in paths[start : start + batch_size]])
        vision = model.encode_image(batch.to(device))
        image_feat = nn.functional.normalize(model.vision_proj(vision[:, 0]), dim=-1)
        sims.append(image_feat @ text_feat[0])
        states.append(vision)
    sim = torch.cat(sims)
    top = sim.topk(min(rerank, len(paths))).indices
    pairs = torch.stack([top.sort().values, torch.zeros_like(top)], dim=1)
    vision = torch.cat(states)
    scores = itm_scores(model, vision, text, mask, pairs) if rerank else torch.empty(0)
    itm = {int(i): float(s) for i, s in zip(pairs[:, 0], scores)}
    order = sorted(
        range(len(paths)), key=lambda i: (i not in itm, -itm.get(i, 0.0), -float(sim[i]))
    )
    return [SearchHit(str(paths[i]), float(sim[i]), itm.get(i)) for i in order]


class SearchCommand(Command):
    """``xfm search --images DIR --checkpoint CKPT "query"``."""

    help = "rank a folder of images for a text query (ITC + ITM re-ranking)"
    description = __doc__

    def add_arguments(self, parser: argparse.ArgumentParser) -> None:
        parser.add_argument("query", help="the text to search for")
        parser.add_argument(
            "--images", required=True, help="folder of images (searched recursively)"
        )
        parser.add_argument(
            "--checkpoint", required=True, help="retrieval run dir / weights / golden dir"
        )
        parser.add_argument("--tokenizer", default=None, help="tokenizer (default: the run's)")
        parser.add_argument(
            "--top", type=int, default=10, help="results printed (default: %(default)s)"
        )
        parser.add_argument(
            "--rerank", type=int, default=16, help="images re-ranked by ITM (default: %(default)s)"
        )
        parser.add_argument(
            "--device", default="auto", help="cpu, cuda, cuda:N or auto (default: %(default)s)"
        )

    def run(self, args: argparse.Namespace) -> int:
        from xfm.core.config import load_config
        from xfm.tasks.base import FinetuneConfig, get_task
        from xfm.tasks.cli import build_eval_model
        from xfm.train.engine import resolve_device

        try:
            folder = Path(args.images)
            if not folder.is_dir():
                raise FileNotFoundError(f"--images {folder} is not a folder")
            paths = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
            if not paths:
                raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
            ckpt = Path(args.checkpoint)
            run_cfg = ckpt / "config.yaml" if ckpt.is_dir() else ckpt.parent / "config.yaml"
            cfg = load_config(FinetuneConfig, str(run_cfg)) if run_cfg.is_file() else None
            tok_path = args.tokenizer or (cfg.data.expand(cfg.data.tokenizer) if cfg else None)
            if not tok_path:
                raise ValueError("give --tokenizer (the checkpoint has no run config naming one)")
            from xfm.text.tokenizer import load_tokenizer

            tokenizer = load_tokenizer(tok_path)
            task = get_task("retrieval")
            model, _spec = build_eval_model(task, args.checkpoint, None)
            model = model.to(resolve_device(args.device)).eval()
            check_encoder("vision_encoder", model.vision_encoder, ("core", "search"))
            size = model.vision_encoder.config.image_size
            size = size if isinstance(size, int) else int(size[0])
            hits = search_images(
                model, tokenizer, paths, args.query, image_size=size, rerank=args.rerank
            )
        except (FileNotFoundError, ValueError, EncoderContractError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for rank, hit in enumerate(hits[: args.top], 1):
            itm = "" if hit.itm is None else f"itm={hit.itm:+.3f} "
            print(f"{rank:>3}. {itm}itc={hit.itc:+.3f}  {hit.path}")
        return 0
