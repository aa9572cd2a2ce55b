"""--sensor / --bands in the trainers: the sensor view of a dataset, the model's input groups,
the checkpoint record, and main_finetune / dense training / label efficiency / predict using them."""

import argparse
import json
import shlex

import numpy as np
import pytest
import rasterio
import torch

import models_vit_tensor
from downstream_tasks import train as dense_train
from main_finetune import get_args_parser
from util.data.band_adapter import model_band_centres
from util.data.sensor_view import (
    SensorView,
    flags_from_metadata,
    render_weights,
    sensor_from_flags,
    sensor_from_metadata,
    sensor_record,
    slot_map,
)
from util.data.sensors import SENSORS, SensorError, get_sensor
from util.data.synthetic import generate
from util.data.transforms import build_transforms
from util.training.checkpoint import load_checkpoint_file, save_checkpoint
from util.training.checkpoint_meta import checkpoint_meta, read_metadata
from util.training.sensor_input import input_groups, set_input_groups

TINY = ["--model", "vit_tiny_patch8_96", "--input_size", "16", "--device", "cpu",
        "--num_workers", "0", "--batch_size", "16", "--print_freq", "2", "--save_every", "100",
        "--native_size", "16"]  # fmt: skip


@pytest.fixture(scope="module")
def eurosat_root(tmp_path_factory):
    return generate("eurosat", tmp_path_factory.mktemp("eurosat"), num=100, size=16, seed=0)


# --------------------------------------------------------------------------------------------
# the sensor view of a Sentinel-2 sample
# --------------------------------------------------------------------------------------------
def test_flags_resolve_to_band_sets_and_errors_name_the_flag():
    assert sensor_from_flags(None, None) is None
    assert sensor_from_flags("sentinel2_l2a", None) is None  # the datasets' own bands
    assert sensor_from_flags("s2", "B02,B03,B04,B08").band_names == ("B02", "B03", "B04", "B08")
    assert sensor_from_flags(None, "B02,B08").id == "sentinel2_l2a[B02,B08]"
    custom = sensor_from_flags(None, "red:665,nir:842")
    assert custom.band_names == ("red", "nir") and list(custom.centres) == [665, 842]
    assert sensor_from_flags("landsat8", "B2,B3,B4,B5").band_names == ("B2", "B3", "B4", "B5")
    with pytest.raises(SensorError, match="--bands red:665.*leave --sensor landsat8 out"):
        sensor_from_flags("landsat8", "red:665")
    with pytest.raises(SensorError, match="--sensor custom needs --bands"):
        sensor_from_flags("custom", None)
    with pytest.raises(SensorError, match="no band 'B9'"):
        sensor_from_flags("landsat8", "B9")
    with pytest.raises(SensorError, match="outside the Sentinel-2 range"):
        render_weights(sensor_from_flags(None, "red:665,thermal:10900"))


@pytest.mark.parametrize("sensor", [None, "landsat8", "rgbn", "red:665,nir:842"])
def test_checkpoint_record_round_trips(sensor):
    s = None if sensor is None else get_sensor(sensor)
    record = sensor_record(s)
    back = sensor_from_metadata(record)
    if sensor is None:
        assert record == {"sensor": "sentinel2_l2a", "sensor_bands": None} and back is None
        assert flags_from_metadata(record) == (None, None)
        return
    assert [(b.name, b.centre_nm) for b in back.bands] == [(b.name, b.centre_nm) for b in s.bands]
    flags = flags_from_metadata(json.loads(json.dumps(record)))  # as a checkpoint stores it
    again = sensor_from_flags(*flags)
    assert [(b.name, b.centre_nm) for b in again.bands] == [(b.name, b.centre_nm) for b in s.bands]


def test_sentinel2_view_is_the_identity_bit_for_bit():
    x = torch.rand(12, 8, 8) * 5000
    view = SensorView(None, SENSORS["sentinel2_l2a"])
    assert view.identity and view.groups is None
    assert torch.equal(view({"image": x})["image"], x)


def test_landsat_view_renders_then_interpolates_back():
    x = torch.rand(12, 3, 3) * 5000
    view = SensorView(None, "landsat8")
    got = view({"image": x})["image"].numpy()
    slots, ls = model_band_centres(), SENSORS["landsat8"].centres
    for i, j in np.ndindex(3, 3):
        seen = np.interp(ls, slots, x[:, i, j].double().numpy())  # what Landsat records
        back = np.interp(slots, ls, seen)  # the adapter (every slot within 60 nm of a band)
        np.testing.assert_allclose(got[:, i, j], back, rtol=1e-5)


def test_zero_filling_and_dropped_groups_are_zero_after_normalisation():
    tf = build_transforms("eurosat", False, 8, "zscore_eurosat")
    x = torch.rand(12, 8, 8) * 3000 + 500
    zeros = SensorView(tf, "landsat8", "zeros")
    live = slot_map("landsat8", "zeros").live
    assert list(np.flatnonzero(~live)) == [4, 5, 6, 7, 9]  # B05-B08, B09: no OLI band within 25 nm
    out = zeros({"image": x})["image"]
    assert (out[~torch.from_numpy(live)] == 0).all() and (out[torch.from_numpy(live)] != 0).all()
    rgbn = SensorView(tf, "rgbn")
    assert rgbn.groups == (0, 1, 2)
    out = rgbn({"image": x})["image"]
    assert (out[9:] == 0).all() and (out[:9] != 0).all()
    assert rgbn.normalization == "zscore_eurosat"


def test_input_groups_ride_on_every_call_and_leave_the_state_dict_alone():
    torch.manual_seed(0)
    model = models_vit_tensor.create_model("vit_tiny_patch8_96", img_size=16, num_classes=3).eval()
    keys = list(model.state_dict())
    x = torch.randn(2, 12, 16, 16)
    with torch.no_grad():
        want, full = model(x, groups=(0, 1, 2)), model(x)
        set_input_groups(model, (0, 1, 2))
        assert torch.equal(model(x), want) and input_groups(model) == (0, 1, 2)
        assert torch.equal(model(x, groups=None), full)  # an explicit argument wins
        set_input_groups(model, None)
        assert torch.equal(model(x), full)
    assert list(model.state_dict()) == keys


def test_old_checkpoints_read_as_sentinel2(tmp_path):
    meta = checkpoint_meta("vit_tiny_patch8_96", "models_vit_tensor", "classify", 16)
    meta.pop("sensor"), meta.pop("sensor_bands")  # as written before the keys existed
    save_checkpoint(tmp_path / "old.pth", {"format": "spectralgpt-v2", "model": {}, "meta": meta})
    got = read_metadata(tmp_path / "old.pth")
    assert got["sensor"] == "sentinel2_l2a" and got["sensor_bands"] is None


# --------------------------------------------------------------------------------------------
# the trainers
# --------------------------------------------------------------------------------------------
def _finetune(*argv):
    from main_finetune import main

    return main(get_args_parser().parse_args([str(a) for a in argv]))


def test_finetune_on_a_sensor_records_it_and_eval_takes_it_back(eurosat_root, tmp_path, caplog):
    out = tmp_path / "ft"
    _finetune(*TINY, "--dataset_type", "eurosat", "--train_path", eurosat_root, "--test_path",
              eurosat_root, "--epochs", "1", "--warmup_epochs", "0", "--sensor", "rgbn",
              "--output_dir", out)  # fmt: skip
    ckpt = load_checkpoint_file(out / "checkpoint-best.pth")
    meta = read_metadata(ckpt)
    assert meta["sensor"] == "rgbn"
    assert meta["sensor_bands"]["bands"] == ["B02", "B03", "B04", "B08"]
    assert meta["sensor_bands"]["present_groups"] == [0, 1, 2]
    plain = models_vit_tensor.create_model("vit_tiny_patch8_96", img_size=16, num_classes=10)
    assert list(ckpt["model"]) == list(plain.state_dict())  # nothing wrapped
    best = ckpt["metrics"]["acc1"]
    # --eval without --sensor: the checkpoint's band set
    caplog.set_level("INFO")
    ev = _finetune(*TINY[2:], "--dataset_type", "eurosat", "--eval", "--resume",
                   out / "checkpoint-best.pth", "--test_path", eurosat_root,
                   "--output_dir", tmp_path / "ev")  # fmt: skip
    assert "--sensor rgbn" in caplog.text
    assert ev["last"]["acc1"] == pytest.approx(best)
    # a transfer evaluation on another band set is allowed; resuming on one is not
    _finetune(*TINY[2:], "--dataset_type", "eurosat", "--eval", "--resume",
              out / "checkpoint-best.pth", "--test_path", eurosat_root, "--sensor", "landsat8",
              "--output_dir", tmp_path / "ev2")  # fmt: skip
    with pytest.raises(ValueError, match="was trained on rgbn"):
        _finetune(*TINY, "--dataset_type", "eurosat", "--train_path", eurosat_root,
                  "--test_path", eurosat_root, "--epochs", "2", "--warmup_epochs", "0",
                  "--resume", out / "checkpoint-last.pth", "--sensor", "landsat8",
                  "--output_dir", out)  # fmt: skip


def test_dense_training_on_custom_bands(tmp_path_factory, tmp_path):
    root = generate("segmunich", tmp_path_factory.mktemp("seg"), num=12, size=32, seed=0)
    parser = argparse.ArgumentParser(parents=[dense_train.get_args_parser()])
    argv = (f"--task segmunich --data_root {root} --output_dir {tmp_path} --device cpu "
            "--num_workers 0 --warmup_epochs 0 --vis_every 0 --print_freq 1000 --input_size 32 "
            "--model segmenter_vit_tiny_patch8_128 --model_kwargs reduction=mean channels=64 "
            "--batch_size 4 --epochs 1 --max_steps_per_epoch 2 --vis_scenes 0 "
            "--bands blue:490,green:560,red:665,nir:842")  # fmt: skip
    res = dense_train.main(parser.parse_args(shlex.split(argv)))
    assert "miou" in res["test"]
    meta = read_metadata(tmp_path / "checkpoint-best.pth")
    assert meta["sensor"] == "custom" and meta["sensor_bands"]["present_groups"] == [0, 1, 2]
    ev = dense_train.main(parser.parse_args(shlex.split(
        f"--task segmunich --data_root {root} --output_dir {tmp_path / 'ev'} --device cpu "
        f"--num_workers 0 --vis_scenes 0 --eval --resume {tmp_path / 'checkpoint-best.pth'}"
    )))  # fmt: skip
    assert ev["test"]["miou"] == pytest.approx(res["test"]["miou"])


def test_label_efficiency_on_a_sensor(eurosat_root):
    from evaluation.label_efficiency import run

    res = run({"random": None}, "eurosat", eurosat_root, model="vit_tiny_patch8_96",
              input_size=16, fractions=[1.0], seeds=[0], protocols=("knn",), native_size=16,
              sensor="rgbn")  # fmt: skip
    assert res["setup"]["sensor"] == "rgbn" and 0 <= res["rows"][0]["mean"] <= 100


def test_predict_defaults_to_the_checkpoints_sensor(tmp_path):
    import predict
    from downstream_tasks import models_dense
    from util.data.sentinel2 import MODEL_BANDS
    from util.data.synthetic_sensors import render_sensor_scene, write_rgbn

    tif = write_rgbn(tmp_path / "scene_rgbn.tif", render_sensor_scene(48, seed=3, cloud_bias=None))
    name = "segmenter_vit_tiny_patch8_128"
    model = models_dense.create_model(name, img_size=32, num_classes=3).eval()
    meta = checkpoint_meta(name, "downstream_tasks.models_dense", "segment", 32, MODEL_BANDS,
                           "minmax", list("abc"), model_kwargs={"img_size": 32, "num_classes": 3})  # fmt: skip
    meta.update(sensor_record(SENSORS["rgbn"]))
    ckpt = tmp_path / "seg.pth"
    save_checkpoint(ckpt, {"format": "spectralgpt-v2", "model": model.state_dict(), "meta": meta})
    out = tmp_path / "classes.tif"
    predict.cli(["--checkpoint", str(ckpt), "--input", str(tif), "--output", str(out),
                 "--no_progress"])  # fmt: skip
    with rasterio.open(out) as src:
        tags = json.loads(src.tags()["input"])
    assert tags["sensor"] == "rgbn" and tags["present_groups"] == [0, 1, 2]
