"""Checks every registered detector must pass (scikit-learn's check_estimator, in our terms).

Each method is fitted once per module on the small settings of its registry entry (``fitted``) and
that model is shared, read-only, by the checks that only score; the checks about fitting fit their own.
"""

import copy
import importlib.util
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from safetensors.torch import load_file, save_file

import flawscope as fs
from flawscope.data.datasets import InMemoryDataset
from flawscope.errors import ConfigError, DataError, ModelFileError, NotFittedError
from flawscope.models.registry import CAPABILITIES, SUPERVISED, model_entry


def small(name, **extra):
    """The registry's small test settings of ``name`` on the CPU."""
    return {**model_entry(name).test_params, "device": "cpu", **extra}


def supervised(name):
    return model_entry(name).supports(SUPERVISED)


@pytest.fixture(scope="module", params=fs.list_models())
def name(request):
    return request.param


@pytest.fixture(scope="module")
def train(name, texture_train, labelled_train):
    """What ``name`` learns from: 9 good images, or labelled good and defective ones for a supervised method."""
    return labelled_train if supervised(name) else texture_train[:9]


@pytest.fixture(scope="module")
def fitted(name, train, texture_train):
    """``name`` fitted with seed 3 (and calibrated on the other good images). Tests must not modify it."""
    model = fs.create(name, **small(name, seed=3)).fit(train, progress=False)
    if not supervised(name):  # a supervised method sets its threshold while fitting
        model.calibrate(texture_train[9:], progress=False)
    return model


@pytest.fixture(scope="module")
def prediction(fitted, texture_test):
    return fitted.predict(texture_test, progress=False)


def test_registry_entries_say_what_tools_need(name):
    entry = model_entry(name)
    assert entry.summary and "``" not in entry.summary
    assert set(entry.test_params) <= set(entry.parameters) and entry.capabilities <= set(CAPABILITIES)
    assert entry.detector.name == name and fs.create(name).capabilities == entry.capabilities


def test_fit_returns_self_and_fitting_again_equals_fitting_once(train, fitted, prediction, texture_test):
    model = copy.copy(fitted)  # fitted and calibrated with seed 3: fitting again forgets all of that
    assert model.fit(train, progress=False) is model
    assert model.is_calibrated == model.supervised  # the old threshold is gone (a classifier sets its own)
    np.testing.assert_array_equal(model.predict(texture_test, progress=False).scores, prediction.scores)


def test_maps_come_back_at_each_images_own_size(fitted):
    rng = np.random.default_rng(0)
    sizes = [(96, 96), (80, 130), (140, 72)]
    images = [rng.uniform(0, 1, size).astype(np.float32) for size in sizes]
    result = fitted.predict(images, progress=False)
    assert [anomaly_map.shape for anomaly_map in result.anomaly_maps] == sizes
    assert [mask.shape for mask in result.masks] == sizes
    assert all(np.isfinite(anomaly_map).all() for anomaly_map in result.anomaly_maps)


def test_clone_and_get_params_round_trip(name, fitted):
    params = fitted.get_params()
    assert fitted.clone().get_params() == params == fs.create(name, **params).get_params()
    with pytest.raises(NotFittedError):
        fitted.clone().predict([np.zeros((32, 32), np.float32)], progress=False)
    assert fs.create(name).set_params(**params).get_params() == params


def test_save_load_round_trip_gives_identical_results(fitted, prediction, texture_test, tmp_path):
    loaded = fs.load(fitted.save(tmp_path / "model"))
    after = loaded.predict(texture_test, progress=False)
    np.testing.assert_array_equal(prediction.scores, after.scores)
    assert loaded.threshold_ == fitted.threshold_ and loaded.calibration_ == fitted.calibration_
    assert all(np.array_equal(a, b) for a, b in zip(prediction.masks, after.masks))
    assert loaded.get_params() == fitted.get_params()


def test_damaged_or_edited_model_files_give_model_file_errors(fitted, tmp_path):
    path = fitted.save(tmp_path / "model")
    config_path, tensor_path = path / "config.json", path / "model.safetensors"
    config, tensors = json.loads(config_path.read_text()), load_file(str(tensor_path))
    first = sorted(tensors)[0]

    def write(new_config, new_tensors):
        config_path.write_text(json.dumps(new_config))
        save_file(new_tensors, str(tensor_path))

    # a tensor of another shape, the config edited to match it: the method itself must notice
    reshaped = {**tensors, first: tensors[first].reshape(-1)[:1].clone()}
    write({**config, "tensors": {**config["tensors"], first: [1]}}, reshaped)
    with pytest.raises(ModelFileError, match=r"model\.safetensors"):
        fs.load(path)
    # a tensor missing from both files
    missing = {key: value for key, value in tensors.items() if key != first}
    write({**config, "tensors": {k: v for k, v in config["tensors"].items() if k != first}}, missing)
    with pytest.raises(ModelFileError, match=str(path)):
        fs.load(path)
    # the config's meta (what the method saved besides tensors) emptied
    if config["meta"]:
        write({**config, "meta": {}}, tensors)
        with pytest.raises(ModelFileError, match=str(path)):
            fs.load(path)
    # a truncated tensor file
    write(config, tensors)
    tensor_path.write_bytes(tensor_path.read_bytes()[:100])
    with pytest.raises(ModelFileError, match=r"model\.safetensors.*damaged"):
        fs.load(path)


def test_a_failed_fit_leaves_the_detector_as_it_was(name, fitted, prediction, texture_test, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    images = [sample.image for sample in texture_test.samples[:4]] + [broken]
    labels = [0, 0, 1, 1, 1] if supervised(name) else [0] * 5
    data = InMemoryDataset(images, labels=labels)
    model = copy.copy(fitted)
    with pytest.raises(DataError, match=r"broken\.png"):
        model.fit(data, progress=False)
    np.testing.assert_array_equal(model.predict(texture_test, progress=False).scores, prediction.scores)
    assert model.threshold_ == fitted.threshold_
    fresh = fs.create(name, **small(name))
    with pytest.raises(DataError, match=r"broken\.png"):
        fresh.fit(data, progress=False)
    with pytest.raises(NotFittedError):
        fresh.predict([np.zeros((32, 32), np.float32)], progress=False)


def test_higher_means_more_anomalous(prediction, texture_test):
    labels = texture_test.labels
    assert prediction.scores[labels == 1].mean() > prediction.scores[labels == 0].mean()


def test_not_fitted_error_before_fit(name):
    with pytest.raises(NotFittedError, match="not fitted yet"):
        fs.create(name).predict([np.zeros((32, 32), np.uint8)])
    assert issubclass(NotFittedError, AttributeError)


def test_bad_parameters_give_sklearn_style_errors(name, texture_train):
    model = fs.create(name, batch_size=0)
    with pytest.raises(
        ConfigError, match=r"The 'batch_size' parameter of \w+ must be an int in \[1, inf\]. Got 0 instead."
    ):
        model.fit(texture_train, progress=False)
    with pytest.raises(ConfigError, match="has no parameter"):
        fs.create(name, no_such_parameter=1)


def test_fit_refuses_empty_or_defective_data(name, texture_train, texture_test):
    with pytest.raises(DataError, match="at least 1 good image"):
        fs.create(name, **small(name)).fit([], progress=False)
    if supervised(name):  # it needs both kinds, and labels
        with pytest.raises(DataError, match="needs good and defective images"):
            fs.create(name, **small(name)).fit(texture_train, progress=False)
        with pytest.raises(DataError, match="unlabelled"):
            fs.create(name, **small(name)).fit([np.zeros((32, 32), np.uint8)] * 2, progress=False)
    else:
        with pytest.raises(DataError, match="defective"):
            fs.create(name, **small(name)).fit(texture_test, progress=False)


def test_unknown_model_lists_the_registry():
    with pytest.raises(ConfigError, match=r"Did you mean 'patchcore'.*Registered models: .*patchcore"):
        fs.create("patchcor")


def test_foreign_or_newer_model_directories(fitted_patchcore, tmp_path):
    path = fitted_patchcore.save(tmp_path / "model")
    config = (path / "config.json").read_text()
    (path / "config.json").write_text(config.replace('"format_version": 1', '"format_version": 99'))
    with pytest.raises(ModelFileError, match="format version 99"):
        fs.load(path)
    (path / "config.json").write_text(config.replace('"coreset_ratio"', '"no_such_parameter"'))
    with pytest.raises(ModelFileError, match=r"config\.json.*no_such_parameter"):
        fs.load(path)
    with pytest.raises(ModelFileError, match=r"config\.json is missing"):
        fs.load(tmp_path / "nowhere")


def parity_images(texture_test):
    """Good and defective textures plus images of other sizes and aspect ratios than the model input."""
    rng = np.random.default_rng(1)
    odd = [rng.uniform(0, 1, size).astype(np.float32) for size in ((80, 130), (140, 72, 3))]
    return [sample.image for sample in texture_test.samples[::3]] + odd


def test_an_export_scores_as_the_detector_does(name, fitted, texture_test, tmp_path):
    """ONNX (and OpenVINO where installed): scores within 1e-4 relative, maps within 1e-3, labels identical --
    or a clear refusal."""
    from flawscope.export import check_parity

    formats = ["onnx", "openvino"] if importlib.util.find_spec("openvino") else ["onnx"]
    refused = [graph_format for graph_format in formats if fitted._export_refusal(graph_format) is not None]
    for graph_format in refused:
        with pytest.raises(ConfigError, match=f"cannot be exported to {graph_format}"):
            fitted.export(tmp_path / graph_format, graph_format)
    exported = [graph_format for graph_format in formats if graph_format not in refused and "onnx" not in refused]
    if not exported:
        return
    directory = fitted.export(tmp_path / "exported", exported[-1])  # an OpenVINO export holds the ONNX graph too
    for graph_format in exported:
        parity = check_parity(fitted, directory, parity_images(texture_test), graph_format)
        assert parity["passed"], parity
        assert parity["n_images"] == 10


def test_eight_threads_score_exactly_as_one(fitted, prediction, texture_test):
    """One loaded detector shared by 8 threads (as the service shares it) gives the scores and maps of sequential
    use: scoring keeps no state on the detector that another thread could change under it."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(lambda _: fitted.predict(texture_test, progress=False), range(8)))
    for result in results:
        np.testing.assert_array_equal(result.scores, prediction.scores)
        for anomaly_map, sequential in zip(result.anomaly_maps, prediction.anomaly_maps):
            np.testing.assert_array_equal(anomaly_map, sequential)
