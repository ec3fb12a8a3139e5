"""`braintumor monitor`: are the answers in a prediction log still like the ones evaluation saw?

Per model version in the log (prediction_log.py), three tests from scipy.stats, each against what the model was
built and evaluated to give:
- class mix: the predicted labels against the reference's predicted labels (`chi2_contingency` of the two count
  rows: the reference is a sample too, so a goodness-of-fit test against its shares as if exact would be too eager);
- confidence: the top probability against the reference's (two-sample Kolmogorov-Smirnov, `ks_2samp`);
- unlike_training: the share of flagged scans against the design rate, 1 - model.unlike_training_quantile (about
  5%) of scans like the Training scans (one-sided `binomtest`: more flagged than designed is the drift).
An alert needs both p < `alpha` (0.01) and a shift a user would care about (MIN_MIX_SHIFT, MIN_KS_STATISTIC,
MIN_UNLIKE_EXCESS): on a month of answers a test finds differences too small to matter. Fewer than MIN_ANSWERS
answers of a version: no test, and the report says so. scipy, not Evidently: three tests and a page do not earn a
dependency of its size, and scipy already comes with scikit-learn.

The reference is evaluation's table of Testing predictions (plots/eval/predictions.csv: `predicted`,
`probability`), or another prediction log (.jsonl: last month's answers).
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from scipy import stats  # noqa: E402

from braintumor.errors import BrainTumorError  # noqa: E402
from braintumor.fileio import write_text  # noqa: E402
from braintumor.serving.prediction_log import read_log  # noqa: E402

ALPHA = 0.01
MIN_ANSWERS = 30
MIN_MIX_SHIFT = 0.10  # the largest change of one class's share, 0..1
MIN_KS_STATISTIC = 0.10  # the largest gap between the two confidence distributions' CDFs
MIN_UNLIKE_EXCESS = 0.05  # flagged share above the design rate (0.05 -> at least 0.10 flagged)
DEFAULT_DESIGN_RATE = 0.05  # 1 - model.unlike_training_quantile's default, for logs without novelty_quantile


@dataclass
class Alert:
    version: str
    test: str
    statistic: float
    p_value: float
    figures: str
    look_at: str


def load_reference(path: str | Path) -> pd.DataFrame:
    """-> columns `label` (predicted) and `probability` (top probability)."""
    path = Path(path)
    if not path.is_file():
        raise BrainTumorError(
            f"reference {path} not found: run `dvc repro evaluate` (it writes "
            "plots/eval/predictions.csv), or give --reference a predictions.csv or a prediction log"
        )
    if path.suffix == ".jsonl" or path.name.endswith((".jsonl.1", ".jsonl.2")):
        frame, _ = read_log(path)
        return frame[["label", "probability"]]
    frame = pd.read_csv(path)
    missing = {"predicted", "probability"} - set(frame.columns)
    if missing:
        raise BrainTumorError(
            f"reference {path} lacks the columns {sorted(missing)}; give evaluation's "
            "plots/eval/predictions.csv (columns predicted, probability) or a prediction log"
        )
    return frame.rename(columns={"predicted": "label"})[["label", "probability"]]


def version_key(row: pd.Series) -> str:
    name = row.get("model") if isinstance(row.get("model"), str) else "model"
    if isinstance(row.get("version"), str) and row["version"]:
        return f"{name} v{row['version']}"
    if isinstance(row.get("run_id"), str) and row["run_id"]:
        return f"{name} run {row['run_id'][:8]}"
    return f"{name} (version unknown)"


def class_mix_test(version: str, labels: pd.Series, reference: pd.Series) -> tuple[dict, Alert | None]:
    classes = sorted(set(labels) | set(reference))
    counts = np.array([[int((labels == c).sum()) for c in classes], [int((reference == c).sum()) for c in classes]])
    counts = counts[:, counts.sum(axis=0) > 0]
    chi2, p, _, _ = stats.chi2_contingency(counts) if counts.shape[1] > 1 else (0.0, 1.0, 0, None)
    shares = {c: (float((labels == c).mean()), float((reference == c).mean())) for c in classes}
    shift_class, (now, then) = max(shares.items(), key=lambda kv: abs(kv[1][0] - kv[1][1]))
    result = {
        "test": "chi-square (class mix)",
        "statistic": float(chi2),
        "p_value": float(p),
        "shares": {c: {"log": a, "reference": b} for c, (a, b) in shares.items()},
        "largest_shift": {"class": shift_class, "log": now, "reference": then},
    }
    if p < ALPHA and abs(now - then) >= MIN_MIX_SHIFT:
        return result, Alert(
            version,
            result["test"],
            float(chi2),
            float(p),
            f"{shift_class}: {now:.0%} of the answers against {then:.0%} in the reference "
            f"(chi-square {chi2:.1f}, p = {p:.1e})",
            "the scans sent lately: a new site, a new referral pattern, or one class only (a "
            "test feed?); and the confusion matrix of that class",
        )
    return result, None


def confidence_test(version: str, probability: pd.Series, reference: pd.Series) -> tuple[dict, Alert | None]:
    result_ks = stats.ks_2samp(probability, reference)
    d, p = float(result_ks.statistic), float(result_ks.pvalue)
    result = {
        "test": "two-sample Kolmogorov-Smirnov (confidence)",
        "statistic": d,
        "p_value": p,
        "median": {"log": float(probability.median()), "reference": float(reference.median())},
    }
    if p < ALPHA and d >= MIN_KS_STATISTIC:
        return result, Alert(
            version,
            result["test"],
            d,
            p,
            f"median top probability {probability.median():.2f} against {reference.median():.2f} "
            f"in the reference (KS D = {d:.2f}, p = {p:.1e})",
            "scans the model is unsure of: their source, scanner and preprocessing; a model file "
            "served without its temperature; the calibration section of the report",
        )
    return result, None


def unlike_test(version: str, flagged: pd.Series, design_rate: float) -> tuple[dict, Alert | None]:
    k, n = int(flagged.sum()), len(flagged)
    p = float(stats.binomtest(k, n, design_rate, alternative="greater").pvalue)
    share = k / n
    result = {
        "test": "binomial (unlike_training share)",
        "statistic": share,
        "p_value": p,
        "flagged": k,
        "n": n,
        "design_rate": design_rate,
    }
    if p < ALPHA and share - design_rate >= MIN_UNLIKE_EXCESS:
        return result, Alert(
            version,
            result["test"],
            share,
            p,
            f"{k} of {n} scans ({share:.0%}) unlike the Training scans, against {design_rate:.0%} "
            f"by design (p = {p:.1e})",
            "the flagged scans (novelty > 1): another scanner, sequence, orientation or body part; "
            "their labels deserve a second look; retrain with such scans if they are to be served",
        )
    return result, None


def monitor_version(version: str, answers: pd.DataFrame, reference: pd.DataFrame) -> tuple[dict, list[Alert]]:
    per_day = answers.groupby(answers["time"].dt.strftime("%Y-%m-%d")).size()
    summary = {
        "version": version,
        "answers": len(answers),
        "per_day": {d: int(n) for d, n in per_day.items()},
        "tests": {},
        "note": None,
    }
    if len(answers) < MIN_ANSWERS:
        summary["note"] = f"{len(answers)} answers: fewer than {MIN_ANSWERS}, no test"
        return summary, []
    alerts = []
    for name, (result, alert) in {
        "class_mix": class_mix_test(version, answers["label"], reference["label"]),
        "confidence": confidence_test(version, answers["probability"], reference["probability"]),
    }.items():
        summary["tests"][name] = result
        alerts += [alert] if alert else []
    flagged = answers["unlike_training"].dropna() if "unlike_training" in answers else pd.Series(dtype=bool)
    if len(flagged) >= MIN_ANSWERS:
        quantiles = answers["novelty_quantile"].dropna() if "novelty_quantile" in answers else pd.Series()
        design = 1 - float(quantiles.mode().iloc[0]) if len(quantiles) else DEFAULT_DESIGN_RATE
        result, alert = unlike_test(version, flagged.astype(bool), design)
        summary["tests"]["unlike_training"] = result
        alerts += [alert] if alert else []
    return summary, alerts


def monitor(
    log_path: str | Path,
    *,
    reference: str | Path = "plots/eval/predictions.csv",
    since: str | None = None,
    output_dir: str | Path = "reports",
) -> dict:
    """Writes <output_dir>/monitor.html and monitor.json; returns the JSON's content (`alerts`: what fired)."""
    if not Path(log_path).exists():
        raise BrainTumorError(
            f"prediction log {log_path} not found: it is the file (or folder) the server's "
            "BRAINTUMOR_PREDICTION_LOG named"
        )
    answers, unreadable = read_log(log_path)
    if since:
        try:
            start = pd.Timestamp(since)
        except ValueError:
            raise BrainTumorError(f"--since {since}: give a date such as 2026-12-01 (UTC)") from None
        start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
        answers = answers[answers["time"] >= start] if not answers.empty else answers
    if answers.empty:
        raise BrainTumorError(f"no answers in {log_path}{f' since {since}' if since else ''}: nothing to monitor")
    ref = load_reference(reference)
    keys = answers.apply(version_key, axis=1)
    versions, alerts = [], []
    for version in sorted(keys.unique()):
        summary, found = monitor_version(version, answers[keys == version], ref)
        versions.append(summary)
        alerts += found
    result = {
        "generated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "log": str(log_path),
        "reference": str(reference),
        "since": since,
        "answers": len(answers),
        "unreadable_lines": unreadable,
        "alpha": ALPHA,
        "versions": versions,
        "alerts": [asdict(a) for a in alerts],
    }
    out = Path(output_dir)
    write_text(out / "monitor.json", json.dumps(result, indent=2) + "\n")
    write_text(out / "monitor.html", render(result, answers, keys, ref))
    return result


def render(result: dict, answers: pd.DataFrame, keys: pd.Series, reference: pd.DataFrame) -> str:
    """One self-contained page in the report's look (report.CSS, figures as data URIs)."""
    from braintumor.evaluation.report import CSS, png

    first, last = answers["time"].min(), answers["time"].max()
    alerts = result["alerts"]
    head = (
        f"<p>{result['answers']} answers from {first:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M} UTC in "
        f"<code>{html.escape(result['log'])}</code>, against <code>{html.escape(result['reference'])}</code> "
        f"({len(reference)} answers). Generated {result['generated']}.</p>"
    )
    if result["unreadable_lines"]:
        head += f"<p class=warn>{result['unreadable_lines']} lines of the log are not records (cut by a crash?).</p>"
    if alerts:
        items = "".join(
            f"<li><b>{html.escape(a['version'])}: {html.escape(a['test'])}</b>: "
            f"{html.escape(a['figures'])}. Look at {html.escape(a['look_at'])}.</li>"
            for a in alerts
        )
        head += f"<h2>Alerts</h2><ul class=warn>{items}</ul>"
    else:
        head += "<h2>Alerts</h2><p>None: every tested version answers like the reference.</p>"
    sections = [
        _version_section(summary, answers[keys == summary["version"]], reference, png) for summary in result["versions"]
    ]
    note = (
        f"<p class=note>An alert needs p &lt; {ALPHA} and a shift that matters: a class share moved by at least "
        f"{MIN_MIX_SHIFT:.0%}, a KS statistic of at least {MIN_KS_STATISTIC}, or unlike_training at least "
        f"{MIN_UNLIKE_EXCESS:.0%} above the design rate. Tests: scipy.stats (chi2_contingency, ks_2samp, "
        f"binomtest); versions with fewer than {MIN_ANSWERS} answers are not tested.</p>"
    )
    return (
        f"<!doctype html><html><head><meta charset=utf-8><title>Prediction monitor</title><style>{CSS}</style>"
        f"</head><body><h1>Prediction monitor</h1>{head}{''.join(sections)}{note}</body></html>"
    )


def _version_section(summary: dict, answers: pd.DataFrame, reference: pd.DataFrame, png) -> str:
    parts = [f"<h2>{html.escape(summary['version'])}: {summary['answers']} answers</h2>"]
    if summary["note"]:
        parts.append(f"<p class=note>{html.escape(summary['note'])}</p>")
    rows = "".join(
        f"<tr><td>{html.escape(t['test'])}</td><td>{t['statistic']:.3f}</td><td>{t['p_value']:.2e}</td></tr>"
        for t in summary["tests"].values()
    )
    if rows:
        parts.append(f"<table><tr><th>test</th><th>statistic</th><th>p</th></tr>{rows}</table>")
    mix = summary["tests"].get("class_mix")
    if mix:
        rows = "".join(
            f"<tr><td>{html.escape(c)}</td><td>{s['log']:.1%}</td><td>{s['reference']:.1%}</td></tr>"
            for c, s in mix["shares"].items()
        )
        parts.append(f"<table><tr><th>predicted class</th><th>log</th><th>reference</th></tr>{rows}</table>")
    parts.append(png(_figure(summary, answers, reference)))
    return "".join(parts)


def _figure(summary: dict, answers: pd.DataFrame, reference: pd.DataFrame) -> plt.Figure:
    novelty = answers["novelty"].dropna() if "novelty" in answers else pd.Series(dtype=float)
    fig, axes = plt.subplots(1, 3 if len(novelty) else 2, figsize=(13, 3.2))
    days = summary["per_day"]
    axes[0].bar(list(days), list(days.values()), color="#4a7ab5")
    axes[0].set_title("answers per day (UTC)")
    axes[0].tick_params(axis="x", labelrotation=45, labelsize=7)
    bins = np.linspace(0, 1, 21)
    axes[1].hist(reference["probability"], bins=bins, density=True, alpha=0.5, label="reference", color="#888")
    axes[1].hist(answers["probability"], bins=bins, density=True, alpha=0.6, label="log", color="#4a7ab5")
    axes[1].set_title("top probability")
    axes[1].legend()
    if len(novelty):
        axes[2].hist(novelty.clip(upper=5), bins=30, color="#4a7ab5")
        axes[2].axvline(1.0, color="#a40", linestyle="--", label="unlike_training above")
        axes[2].set_title("novelty (clipped at 5)")
        axes[2].legend()
    fig.tight_layout()
    return fig
