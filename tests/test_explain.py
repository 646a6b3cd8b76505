"""Explanations stay on site: heat maps on the image's grid, written only under --out.

`fedvlm explain` runs in-process with every socket connection refused and recorded; the
files it leaves are compared before and after; and the ClientApp's evaluate reply is the
same before and after explaining, so no explanation can ride along to the coordinator.
"""

import json
import socket
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.common.serde import message_from_proto, message_to_proto
from lora_start import b_moved_off_zero
from PIL import Image

from cli.main import main
from client import app as client_app
from fedvlm import contract
from fedvlm.adapter import adapter_to_arrayrecord, get_adapter_state, set_adapter_state
from fedvlm.config import RunSettings
from fedvlm.data.partition import synthetic_site
from fedvlm.explain import load_adapter, saliency
from fedvlm.vlm import load_peft_model

RUN = RunSettings.from_config({})


@pytest.fixture(scope="module")
def site_folder(tmp_path_factory) -> Path:
    """A site's image folder (validation split only) made from the synthetic task."""
    folder = tmp_path_factory.mktemp("site")
    site = synthetic_site(
        0, 1, n_train=1, n_val=6, label_alpha=5.0, acquisition_skew=0.5, seed=1, image_size=64
    )
    lines = []
    for i, ex in enumerate(site.val):
        ex.image.save(folder / f"img{i}.png")
        lines.append(
            {
                "file_name": f"img{i}.png",
                "question": ex.question,
                "answer": ex.answer,
                "question_type": ex.question_type,
                "split": "validation",
            }
        )
    lines.append({**lines[0], "split": "train"})  # a train split too, as a real site has
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return folder


@pytest.fixture(scope="module")
def adapter_dir(tmp_path_factory) -> Path:
    """A saved run adapter (PEFT folder) with B moved off zero, so answers depend on LoRA."""
    model, _ = load_peft_model(RUN.base_model, RUN.lora)
    before = get_adapter_state(model)
    set_adapter_state(model, b_moved_off_zero(before, seed=5))
    path = tmp_path_factory.mktemp("run") / "adapter"
    model.save_pretrained(path)
    set_adapter_state(model, before)  # the cached model is shared with other tests
    return path


def test_heat_map_has_the_image_shape_and_differs_between_images(site_folder, adapter_dir):
    from fedvlm.data.imagefolder import load_imagefolder

    model, processor = load_adapter(adapter_dir)
    val = load_imagefolder(site_folder).val
    first, second = saliency(model, processor, val[0]), saliency(model, processor, val[1])
    for heat, ex in ((first, val[0]), (second, val[1])):
        assert heat.shape == (ex.image.height, ex.image.width)
        assert np.isfinite(heat).all() and heat.min() >= 0 and 0.5 < heat.max() <= 1
        assert heat.std() > 0.01  # some regions matter more than others
    assert np.abs(first - second).mean() > 0.01

    # A non-square image: the map follows the image's own shape.
    wide = val[0].__class__(val[0].image.resize((96, 48)), val[0].question, val[0].answer)
    assert saliency(model, processor, wide).shape == (48, 96)


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def test_explain_writes_only_under_out_and_opens_no_connection(
    site_folder, adapter_dir, tmp_path, monkeypatch, capsys
):
    attempts = []

    def refuse(self, address, *args):
        attempts.append(address)
        raise OSError("network access is not allowed in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.chdir(tmp_path)
    watched = {p: _tree(p) for p in (site_folder, adapter_dir.parent, tmp_path)}
    out = tmp_path / "site-private" / "explanations"
    code = main(
        ["explain", "--data", str(site_folder), "--adapter", str(adapter_dir), "--out", str(out)]
        + ["--n", "3"]
    )
    assert code == 0, capsys.readouterr().err
    assert attempts == []
    written = sorted(p.name for p in out.iterdir())
    assert written == [f"explanation-00{i}.png" for i in range(3)] + ["index.json"]
    for name in written[:3]:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width > 300
    index = json.loads((out / "index.json").read_text())
    assert [entry["file"] for entry in index] == written[:3]
    assert _tree(site_folder) == watched[site_folder]
    assert _tree(adapter_dir.parent) == watched[adapter_dir.parent]
    outside = {k: v for k, v in _tree(tmp_path).items() if not k.startswith("site-private/")}
    assert outside == watched[tmp_path]  # nothing written beside the output folder


def test_no_explanation_reaches_a_reply(site_folder, adapter_dir, tmp_path, serverapp_identity):
    model, _ = load_peft_model(RUN.base_model, RUN.lora)
    content = RecordDict({contract.ARRAYS: adapter_to_arrayrecord(get_adapter_state(model))})
    content[contract.CONFIG] = ConfigRecord({contract.SERVER_ROUND: 1})
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"data-path": str(site_folder)},
        state=RecordDict(),
        run_config={"energy-tracking": False, "eval-min-subgroup": 1},
    )

    def reply() -> Message:
        message = Message(content, dst_node_id=7, message_type="evaluate")
        answer = client_app.app(message_from_proto(message_to_proto(message)), context)
        return message_from_proto(message_to_proto(answer))

    before = reply()
    out = tmp_path / "explanations"
    assert (
        main(
            ["explain", "--data", str(site_folder), "--adapter", str(adapter_dir)]
            + ["--out", str(out), "--n", "2"]
        )
        == 0
    )
    after = reply()
    # scalars and the site's name only: no arrays
    assert list(after.content) == [contract.METRICS, contract.SITE]
    metrics = dict(after.content[contract.METRICS])

    def scored(record) -> dict:  # energy-* are the meter's timings, different every call
        return {k: v for k, v in dict(record).items() if not k.startswith("energy-")}

    assert scored(metrics) == scored(before.content[contract.METRICS])  # explaining changed nothing
    assert all(isinstance(v, int | float) for v in metrics.values())
    assert not any("explain" in key or "heat" in key for key in metrics)
    assert len(message_to_proto(after).SerializeToString()) < 4096  # no room for an image
