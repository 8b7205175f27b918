import pytest

from idap.prune.config import ConfigError, Recipe


def test_defaults_match_the_spec():
    r = Recipe()
    assert (r.filter.p0, r.filter.steps, r.filter.alpha) == (0.05, 20, 1.5)
    assert (r.layer.max_removals, r.layer.epsilon) == (5, 0.5)
    assert (r.recovery.lambda_feat, r.recovery.lambda_kd, r.recovery.tau) == (0.5, 0.0, 4.0)
    assert r.recovery.final_budget > 0  # the final fine-tune is never skipped by default
    assert r.calibration_size == 2048


def test_yaml_round_trip_and_overrides(tmp_path):
    r = Recipe.from_dict({"max_accuracy_drop": 0.5, "filter": {"p0": 0.1}})
    path = tmp_path / "r.yaml"
    path.write_text(r.to_yaml())
    loaded = Recipe.from_yaml(path)
    assert loaded == r and loaded.digest() == r.digest()
    o = loaded.with_overrides(["filter.steps=7", "layer.enabled=false", "target_macs_reduction=2"])
    assert (o.filter.steps, o.layer.enabled, o.target_macs_reduction) == (7, False, 2)
    assert o.digest() != r.digest()
    assert o.flat()["filter.steps"] == 7


@pytest.mark.parametrize(
    "data, field",
    [
        ({"filter": {"p0": 1.5}}, "filter.p0"),
        ({"filter": {"p0": "high"}}, "filter.p0"),
        ({"filter": {"steps": 0}}, "filter.steps"),
        ({"filter": {"importance": "magic"}}, "filter.importance"),
        ({"layer": {"epsilon": -1}}, "layer.epsilon"),
        ({"recovery": {"teacher": "oracle"}}, "recovery.teacher"),
        ({"recovery": {"step_budget": 1.5}}, "recovery.step_budget"),
        ({"max_accuracy_drop": -0.1}, "max_accuracy_drop"),
        ({"target_macs_reduction": 0.5}, "target_macs_reduction"),
        ({"device": "tpu"}, "device"),
        ({"bogus": 1}, "bogus"),
        ({"filter": {"bogus": 1}}, "bogus"),
        ({"filter": 3}, "filter"),
    ],
)
def test_invalid_settings_name_the_field(data, field):
    with pytest.raises(ConfigError, match=field):
        Recipe.from_dict(data)


def test_bad_recipe_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        Recipe.from_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("filter: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        Recipe.from_yaml(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3")
    with pytest.raises(ConfigError, match="mapping"):
        Recipe.from_yaml(scalar)
    with pytest.raises(ConfigError, match="section.field=value"):
        Recipe().with_overrides(["filter.steps"])
    with pytest.raises(ConfigError, match="unknown recipe field"):
        Recipe().with_overrides(["filter.nope=1"])


def test_exponent_numbers_without_a_dot_are_numbers_in_overrides_and_recipe_files(tmp_path):
    # YAML 1.1 (PyYAML's safe_load) reads 5e-5 as the string '5e-5': recovery.lr=5e-5 was rejected as "not a number"
    r = Recipe().with_overrides(["recovery.lr=5e-5", "recovery.final_lr=1E-4", "max_accuracy_drop=2e0"])
    assert (r.recovery.lr, r.recovery.final_lr, r.max_accuracy_drop) == (5e-5, 1e-4, 2.0)
    path = tmp_path / "r.yaml"
    path.write_text("recovery:\n  lr: 5e-5\n  teacher: dense\n")
    loaded = Recipe.from_yaml(path)
    assert loaded.recovery.lr == 5e-5 and loaded.recovery.teacher == "dense"
