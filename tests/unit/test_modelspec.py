"""The safe spec parser: what it builds, and what it refuses (with a pointed message)."""

from __future__ import annotations

import pytest
from river import compose, drift, linear_model, optim, preprocessing, tree

from worker.core.modelspec import MAX_SPEC_LENGTH, parse_detector, parse_model, validate_model
from worker.errors import ConfigError, SpecError

MIXED = (
    "(compose.SelectType(float, int) | preprocessing.StandardScaler)"
    " + (compose.SelectType(str) | preprocessing.OneHotEncoder)"
    " | linear_model.LogisticRegression"
)


# --- valid specs ------------------------------------------------------------------------------


def test_single_model_with_kwargs() -> None:
    model = parse_model("linear_model.LogisticRegression(l2=0.001)")
    assert isinstance(model, linear_model.LogisticRegression)
    assert model.l2 == 0.001


@pytest.mark.parametrize("spec", ["preprocessing.StandardScaler", "preprocessing.StandardScaler()"])
def test_bare_name_means_no_args_call(spec: str) -> None:
    assert isinstance(parse_model(spec), preprocessing.StandardScaler)


def test_pipeline() -> None:
    model = parse_model("preprocessing.StandardScaler | linear_model.LogisticRegression(l2=0.001)")
    assert isinstance(model, compose.Pipeline)
    assert [type(step) for step in model.steps.values()] == [
        preprocessing.StandardScaler,
        linear_model.LogisticRegression,
    ]


def test_union_binds_tighter_than_pipeline() -> None:
    model = parse_model(
        "preprocessing.StandardScaler + preprocessing.MinMaxScaler | linear_model.LinearRegression"
    )
    first, second = model.steps.values()
    assert isinstance(first, compose.TransformerUnion)
    assert isinstance(second, linear_model.LinearRegression)


def test_parentheses_group() -> None:
    model = parse_model("compose.SelectType(float) | (preprocessing.StandardScaler)")
    assert isinstance(model, compose.Pipeline)


def test_multiline_spec_inside_parentheses() -> None:
    model = parse_model("(preprocessing.StandardScaler\n  | linear_model.LogisticRegression)")
    assert isinstance(model, compose.Pipeline)


def test_nested_specs_and_submodules() -> None:
    model = parse_model(
        "linear_model.LinearRegression(optimizer=optim.SGD(0.01), loss=optim.losses.Huber(),"
        " intercept_lr=optim.schedulers.Constant(0.1))"
    )
    assert isinstance(model.optimizer, optim.SGD)
    assert isinstance(model.loss, optim.losses.Huber)
    assert isinstance(model.intercept_lr, optim.schedulers.Constant)


def test_nested_pipeline_as_argument() -> None:
    model = parse_model(
        "ensemble.BaggingClassifier("
        "model=preprocessing.StandardScaler | linear_model.LogisticRegression, n_models=3, seed=1)"
    )
    assert isinstance(model.model, compose.Pipeline)


def test_positional_args_negative_numbers_and_exponents() -> None:
    model = parse_model("linear_model.LogisticRegression(optim.SGD(-1.5e-3), l2=+2E-4)")
    assert model.optimizer.learning_rate == -1.5e-3
    assert model.l2 == 2e-4


def test_lists_tuples_strings_and_literals() -> None:
    model = parse_model(
        "tree.HoeffdingTreeClassifier(grace_period=50, nominal_attributes=['country', 'city'],"
        " leaf_prediction='nb', binary_split=True, max_depth=None)"
    )
    assert isinstance(model, tree.HoeffdingTreeClassifier)
    assert model.nominal_attributes == ["country", "city"]
    assert model.leaf_prediction == "nb"
    assert model.binary_split is True
    assert parse_model("compose.Select(('a', 'b'))").keys == {("a", "b")}


def test_type_names() -> None:
    model = parse_model("compose.SelectType(float, int, bool, str)")
    assert model.types == (float, int, bool, str)


def test_each_call_returns_a_new_independent_instance() -> None:
    spec = "preprocessing.StandardScaler | linear_model.LogisticRegression"
    first, second = parse_model(spec), parse_model(spec)
    assert first is not second
    first.learn_one({"x": 1.0}, True)
    assert second["LogisticRegression"].weights == {}
    assert first["LogisticRegression"].weights != {}


def test_mixed_numeric_and_string_features_learn_and_predict() -> None:
    model = parse_model(MIXED)
    for _ in range(20):
        model.learn_one({"amount": 100.0, "country": "FR", "n": 3}, True)
        model.learn_one({"amount": 1.0, "country": "DE", "n": 1}, False)
    union = model.steps[next(iter(model.steps))]
    features = union.transform_one({"amount": 100.0, "country": "FR", "n": 3})
    assert "country_FR" in features and "amount" in features and "n" in features
    assert model.predict_proba_one({"amount": 100.0, "country": "FR", "n": 3})[True] > 0.5
    assert model.predict_proba_one({"amount": 1.0, "country": "DE", "n": 1})[True] < 0.5
    assert model.predict_one({"amount": 12.5, "country": "IT"}) in (True, False)  # unseen


def test_validate_model() -> None:
    assert validate_model("preprocessing.StandardScaler | linear_model.LogisticRegression") is None
    assert validate_model("(preprocessing.StandardScaler | preprocessing.MinMaxScaler) | "
                          "(compose.SelectType(float) | tree.HoeffdingTreeClassifier)") is None
    with pytest.raises(SpecError):
        validate_model("preprocessing.Nope")


@pytest.mark.parametrize("spec", ["preprocessing.StandardScaler", "linear_model.LinearRegression",
                                  "anomaly.HalfSpaceTrees", "cluster.KMeans",
                                  "preprocessing.StandardScaler | anomaly.HalfSpaceTrees"])
def test_a_model_that_is_not_a_classifier_is_refused(spec: str) -> None:
    """It passed, then every event was dead-lettered (no class to serve) instead of exit 2."""
    with pytest.raises(SpecError, match=r"is not a classifier \(\w+ predicts no class\)"):
        validate_model(spec)


def test_spec_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        parse_model("")


# --- detectors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "cls"),
    [
        ("drift.ADWIN(delta=0.002)", drift.ADWIN),
        ("drift.ADWIN", drift.ADWIN),
        ("ADWIN", drift.ADWIN),
        ("drift.PageHinkley()", drift.PageHinkley),
        ("drift.binary.DDM()", drift.binary.DDM),
        ("binary.DDM", drift.binary.DDM),
        ("binary.EDDM(warm_start=10)", drift.binary.EDDM),
    ],
)
def test_parse_detector(spec: str, cls: type) -> None:
    detector = parse_detector(spec)
    assert type(detector) is cls
    assert parse_detector(spec) is not detector


def test_detector_works() -> None:
    detector = parse_detector("drift.ADWIN(delta=0.002)")
    assert detector.delta == 0.002
    for i in range(2000):
        detector.update(0.0 if i < 1000 else 10.0)
        if detector.drift_detected:
            break
    assert detector.drift_detected


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("linear_model.LogisticRegression", "not a river drift detector"),
        ("drift.DriftRetrainingClassifier", "not a river drift detector"),
        ("drift.ADWIN | drift.ADWIN", "combine estimators"),
        ("binary.Nope", "drift.binary.Nope"),
        ("drift.ADWIN(delta=__import__('os'))", "__import__"),
    ],
)
def test_parse_detector_rejects(spec: str, fragment: str) -> None:
    with pytest.raises(SpecError, match="invalid detector spec") as info:
        parse_detector(spec)
    assert fragment in str(info.value)


def test_detector_where_model_expected() -> None:
    with pytest.raises(SpecError, match="not a river estimator"):
        parse_model("drift.ADWIN")


# --- hostile and broken specs -----------------------------------------------------------------


def test_import_os_system_is_rejected_and_not_run(tmp_path) -> None:
    target = tmp_path / "pwned"
    with pytest.raises(SpecError, match="__import__"):
        parse_model(f"__import__('os').system('touch {target}')")
    assert not target.exists()


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("().__class__.__bases__[0]", "().__class__.__bases__[0]"),
        ("linear_model.LogisticRegression.__init__", "__init__"),
        ("linear_model.LogisticRegression(_secret=1)", "_secret"),
        ("lambda x: x", "lambda x: x"),
        ("compose.FuncTransformer(lambda x: x)", '"lambda x: x" — lambdas are not allowed'),
        ("open('/etc/passwd')", "open"),
        ("os.system", "os.system"),
        ("os.system('id')", "os.system"),
        ("datasets.base.os.system('id')", "datasets.base.os"),
        ("linear_model.LogisticRegression(l2=1e400**2)", "1e400**2"),
        ("10**10**10", "10**10**10"),
        ("linear_model.LogisticRegression(l2=1e400)", "not finite"),
        ("[x for x in ()]", "[x for x in ()]"),
        ("linear_model.LogisticRegression(l2=f'{1}')", "f'{1}'"),
        ("compose.Select(*['a'])", "*['a']"),
        ("linear_model.LogisticRegression(**{'l2': 1})", "**{'l2': 1}"),
        ("compose.Select({'a': 1})", "{'a': 1}"),
        ("compose.FuncTransformer(str.upper)", "str.upper"),
        ("linear_model.LogisticRegression(l2=x)", '"x"'),
        ("linear_model.LogisticRegression(l2=-True)", "-True"),
        ("linear_model.LogisticRegression(l2=--1)", "--1"),
        ("linear_model.LogisticRegression(l2=b'1')", "b'1'"),
        ("'linear_' + 'model.LogisticRegression'", "'linear_'"),
        ("preprocessing.StandardScaler()()", "preprocessing.StandardScaler()"),
        ("preprocessing.StandardScaler if True else None", "if True"),
        ("linear_model.Nope", "linear_model.Nope"),
        ("nope.Model", "nope"),
        ("utils.Rolling", "utils.Rolling is not a river estimator"),
        ("optim.SGD", "optim.SGD is not a river estimator"),
        ("preprocessing.StandardScaler | stats.Mean", "stats.Mean"),
        ("StandardScaler", "module.Class"),
        ("river.linear_model.LogisticRegression", 'drop the "river." prefix'),
        ("linear_model.LogisticRegression(l3=1)", "LogisticRegression"),
        ("linear_model.LogisticRegression + linear_model.LogisticRegression", "cannot combine"),
        ("linear_model.LogisticRegression(l2=0.1, l2=0.2)", '"l2=0.2" — l2 is given twice'),
    ],
)
def test_rejected_with_offending_fragment(spec: str, fragment: str) -> None:
    with pytest.raises(SpecError, match="invalid model spec") as info:
        parse_model(spec)
    assert fragment in str(info.value)


def test_error_reports_column() -> None:
    with pytest.raises(SpecError, match=r'at column 25: "lambda x: x" — lambdas are not allowed'):
        parse_model("compose.FuncTransformer(lambda x: x)")
    with pytest.raises(SpecError, match="at line 2, column 4"):
        parse_model("(preprocessing.StandardScaler\n | linear_model.__X)")


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        ("preprocessing.StandardScaler(", "at column 29"),
        ("", "empty"),
        ("   \n", "empty"),
        ("x" * (MAX_SPEC_LENGTH + 1), "max"),
        ("a\x00b", "null bytes"),
        ("(" * 300 + ")" * 300, "nested"),
    ],
)
def test_malformed(spec: str, fragment: str) -> None:
    with pytest.raises(SpecError) as info:
        parse_model(spec)
    assert fragment in str(info.value)


def test_non_string_spec() -> None:
    with pytest.raises(SpecError, match="expected a string"):
        parse_model(None)  # type: ignore[arg-type]


@pytest.mark.parametrize("spec", ["drift.ADWIN(clock=0)", "drift.ADWIN(max_buckets=0)"])
def test_a_detector_that_fails_on_its_first_updates_is_refused_at_start(spec: str) -> None:
    """River takes these arguments, then panics in Rust on the first update, with an
    exception that is not an Exception: it would stop the worker on its first label."""
    from worker.core.config import EngineConfig

    with pytest.raises(SpecError, match="fails on its first updates"):
        EngineConfig(detector=spec)
