"""evaluate: the report from the steps' artifacts, with the plots inside the Markdown artifact."""

from components.services.artifacts import load_trajectory, profile_json, read_json
from idap.bundle import load_bundle
from idap.data import load_splits
from idap.report import evaluate_model


def test_report_measures_both_models(chain):
    report = read_json(chain.out["report_json"].path)
    splits = load_splits(chain.out["data"].path)
    assert report["compressed"] == evaluate_model(load_bundle(chain.out["final"].path), splits)
    assert report["dense"] == evaluate_model(load_bundle(chain.out["dense"].path), splits)
    assert report["trajectory"] == [s.to_json() for s in load_trajectory(chain.out["final_trajectory"].path)]
    assert report["divergence_profile"] == profile_json(read_json(chain.out["profile"].path))
    assert report["ratios"]["params_reduction"] > 1


def test_metrics_artifact_holds_the_headline_figures(chain):
    report = read_json(chain.out["report_json"].path)
    metrics = chain.out["metrics"].metadata
    assert metrics["compressed_test_acc"] == report["compressed"]["test_acc"]
    assert metrics["macs_reduction"] == report["ratios"]["macs_reduction"]
    assert "compressed_latency_ms_b1" not in metrics  # measure_latency=False


def test_markdown_embeds_its_plots(chain):
    text = open(chain.out["report"].path).read()
    assert text.startswith("# IDAP++ compression report — cnn_small on digits")
    assert text.count("](data:image/png;base64,iVBOR") >= 2  # trajectory, profile (and widths)
    assert ".png)" not in text
