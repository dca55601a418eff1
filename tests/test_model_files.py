"""Models on disk: saving is atomic (a process killed mid-save leaves the previous model loadable), and a damaged
or hand-edited model directory -- fuzzed by hypothesis -- gives a ModelFileError naming the file, never another
exception or a model that scores nonsense."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

import flawscope as fs
from flawscope.data.synthetic import make_texture_set
from flawscope.errors import FlawscopeError, ModelFileError, WeightsError
from flawscope.serialization import content_hash

FUZZ = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
JSON_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=8),
    st.lists(st.integers(-5, 300), max_size=3),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2),
)


@pytest.fixture(scope="module")
def saved_models(tmp_path_factory):
    """A calibrated PatchCore and PaDiM saved once; each test copies the one it edits."""
    train, good = make_texture_set(6, 0, size=(64, 64), seed=0), make_texture_set(6, 0, size=(64, 64), seed=5)
    root = tmp_path_factory.mktemp("saved")
    models = {}
    for name, params in (("patchcore", {"coreset_ratio": 0.25}), ("padim", {})):
        model = fs.create(name, image_size=64, device="cpu", seed=0, **params).fit(train, progress=False)
        with pytest.warns(fs.CalibrationWarning):
            model.calibrate(good, progress=False)
        models[name] = model.save(root / name)
    return models


@pytest.fixture(scope="module")
def probe():
    return [make_texture_set(1, 0, size=(64, 64), seed=9).samples[0].image]


def leaf_paths(node, prefix=()):
    """Every key / index path into a JSON document, containers included."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        yield (*prefix, key)
        yield from leaf_paths(value, (*prefix, key))


def edited(config, path, value, delete):
    config = json.loads(json.dumps(config))
    parent = config
    for key in path[:-1]:
        parent = parent[key]
    if delete:
        del parent[path[-1]]
    else:
        parent[path[-1]] = value
    return config


def assert_refused_or_sound(directory: Path, probe) -> None:
    """Loading ``directory`` raises ModelFileError (or WeightsError, for an edited backbone fingerprint) naming it,
    or gives a model that scores finitely (or refuses to score with a flawscope error) -- never another exception."""
    try:
        model = fs.load(directory)
    except (ModelFileError, WeightsError) as error:
        assert str(directory) in str(error)
        return
    try:
        prediction = model.predict(probe, progress=False)
    except FlawscopeError:
        return
    assert np.isfinite(prediction.scores).all() and np.isfinite(prediction.anomaly_maps[0]).all()


@pytest.mark.parametrize("method", ["patchcore", "padim"])
@FUZZ
@given(data=st.data())
def test_hand_edited_configs_are_refused_or_sound(saved_models, probe, tmp_path, method, data):
    directory = tmp_path / "edited"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(saved_models[method], directory)
    config = json.loads((directory / "config.json").read_text())
    paths = sorted(leaf_paths(config), key=repr)
    path = data.draw(st.sampled_from(paths))
    delete = isinstance(path[-1], str) and data.draw(st.booleans())
    (directory / "config.json").write_text(json.dumps(edited(config, path, data.draw(JSON_VALUES), delete)))
    assert_refused_or_sound(directory, probe)


@pytest.mark.parametrize(
    ("key", "value", "said"),
    [
        (("calibration", "threshold"), float("nan"), "thresholds must be finite numbers"),
        (("calibration", "threshold"), "high", "thresholds must be finite numbers"),
        (("calibration", "pixel_threshold"), None, "thresholds must be finite numbers"),
        (("params", "image_size"), "big", "image_size"),
        (("params", "device"), 3, "config.json"),
        (("tensors", "memory_bank"), "64x152", "must be a list of whole numbers"),
        (("meta",), [], '"meta" must be a dict'),
        (("format_version",), 2, "format version 2"),
    ],
)
def test_edited_values_are_named(saved_models, tmp_path, key, value, said):
    directory = tmp_path / "edited"
    shutil.copytree(saved_models["patchcore"], directory)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps(edited(config, key, value, delete=False)))
    with pytest.raises(ModelFileError, match=r"config\.json|edited") as caught:
        fs.load(directory)
    assert said in str(caught.value)


@FUZZ
@given(data=st.data())
def test_any_damage_to_the_tensor_file_is_found(saved_models, tmp_path, data):
    directory = tmp_path / "damaged"
    shutil.rmtree(directory, ignore_errors=True)
    shutil.copytree(saved_models["patchcore"], directory)
    tensor_path = directory / "model.safetensors"
    content = bytearray(tensor_path.read_bytes())
    damage = data.draw(st.sampled_from(["flip", "truncate"]))
    if damage == "flip":
        for where in data.draw(st.sets(st.integers(0, len(content) - 1), min_size=1, max_size=4)):
            content[where] ^= 1 << data.draw(st.integers(0, 7))
    else:
        del content[data.draw(st.integers(0, len(content) - 1)) :]
    tensor_path.write_bytes(bytes(content))
    with pytest.raises(ModelFileError, match=r"model\.safetensors"):
        fs.load(directory)


def test_a_tensor_of_another_dtype_is_named_even_without_the_checksum(saved_models, tmp_path):
    directory = tmp_path / "retyped"
    shutil.copytree(saved_models["patchcore"], directory)
    tensors = load_file(str(directory / "model.safetensors"))
    save_file(
        {name: tensor.to(torch.float64) for name, tensor in tensors.items()}, str(directory / "model.safetensors")
    )
    config = json.loads((directory / "config.json").read_text())
    del config["tensor_sha256"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFileError, match=r"'memory_bank' is float64, config\.json says float32"):
        fs.load(directory)


def test_saving_over_a_model_replaces_it_and_never_other_files(saved_models, tmp_path):
    target = tmp_path / "model"
    shutil.copytree(saved_models["padim"], target)
    model = fs.load(saved_models["patchcore"])
    model.save(target)
    assert fs.load(target).name == "patchcore" and sorted(p.name for p in target.iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # nothing left beside it
    (tmp_path / "empty").mkdir()
    assert fs.load(model.save(tmp_path / "empty")).name == "patchcore"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(ModelFileError, match=r"holds files that are not a saved model's \(notes.txt\)"):
        model.save(busy)
    assert (busy / "notes.txt").read_text() == "keep me"


SAVER = textwrap.dedent(
    """
    import sys
    import flawscope as fs

    first, second, target = fs.load(sys.argv[1]), fs.load(sys.argv[2]), sys.argv[3]
    first.save(target)
    print("saved", flush=True)
    while True:
        second.save(target)
        first.save(target)
    """
)


def test_a_process_killed_mid_save_leaves_a_loadable_model(saved_models, tmp_path):
    """Kill a process that saves two models over one directory in a loop, at seeded random moments: the directory
    always loads as one of the two, whole, and the next save clears what the killed one left."""
    target = tmp_path / "model"
    versions = {content_hash(saved_models["patchcore"]), content_hash(saved_models["padim"])}
    delays = np.random.default_rng(0).uniform(0.05, 0.6, size=5)
    leftovers = 0
    for delay in delays:
        saver = subprocess.Popen(
            [sys.executable, "-c", SAVER, str(saved_models["patchcore"]), str(saved_models["padim"]), str(target)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert saver.stdout is not None and saver.stdout.readline().strip() == "saved"
        time.sleep(float(delay))
        os.kill(saver.pid, signal.SIGKILL)
        saver.wait(timeout=30)
        assert content_hash(target) in versions and fs.load(target).is_calibrated
        leftovers += len(list(tmp_path.glob(".model.saving-*")))
    assert leftovers > 0, "no kill landed inside a save: the test did not test what it says"
    fs.load(saved_models["padim"]).save(target)
    assert not list(tmp_path.glob(".model.saving-*"))
