"""`fedvlm explain`: heat maps of what the adapter's answers rest on, kept in the site's folder.

It runs at a site, on the site's own images: nothing it computes is sent anywhere. Like the
other subcommands, the work (torch, the model) is imported only when it runs.
"""

import argparse
from pathlib import Path

from fedvlm.errors import FedVLMError


def _explain(args: argparse.Namespace) -> int:
    import torch

    from fedvlm.data.imagefolder import load_imagefolder
    from fedvlm.explain import load_adapter, write_explanations

    torch.set_num_threads(args.torch_threads)
    examples = load_imagefolder(Path(args.data).expanduser()).val
    chosen = args.index or list(range(min(args.n, len(examples))))
    if not examples or any(not 0 <= i < len(examples) for i in chosen):
        raise FedVLMError(
            f"--index: the validation split of {args.data} has {len(examples)} examples"
        )
    model, processor = load_adapter(Path(args.adapter).expanduser(), args.base_model)
    out = Path(args.out).expanduser()
    paths = write_explanations(model, processor, [examples[i] for i in chosen], out)
    print(f"fedvlm: {len(paths)} explanations in {out} (they stay here; nothing was sent)")
    return 0


def add_explain_command(sub: argparse._SubParsersAction) -> None:
    """Add `fedvlm explain` to the `fedvlm` parser."""
    exp = sub.add_parser(
        "explain",
        help="at a site: heat maps of the image regions the adapter's answers rest on (PNG)",
    )
    exp.add_argument("--data", required=True, help="the site's image folder (metadata.jsonl)")
    exp.add_argument(
        "--adapter", required=True, help="a run's adapter folder, e.g. runs/ID/adapter"
    )
    exp.add_argument("--out", required=True, help="folder for the PNGs, in the site's own storage")
    exp.add_argument("--n", type=int, default=4, help="explain the first N validation examples")
    exp.add_argument(
        "--index", type=int, action="append", default=[], help="a validation example (repeat)"
    )
    exp.add_argument("--base-model", default=None, help="base model (default: the adapter's)")
    exp.add_argument("--torch-threads", type=int, default=1, help="torch threads (1)")
    exp.set_defaults(func=_explain)
