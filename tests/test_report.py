"""The report's tables come from the evaluation's own functions."""

import numpy as np
import pandas as pd

from braintumor.evaluation.report import _confusion, run_title
from braintumor.evaluation.results import Evaluation, ExternalScores


def test_report_confusion_counts_rows_as_actual_and_columns_as_predicted_in_class_order():
    classes = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
    predictions = pd.DataFrame(
        {
            "actual": ["glioma_tumor", "glioma_tumor", "no_tumor", "pituitary_tumor"],
            "predicted": ["meningioma_tumor", "glioma_tumor", "no_tumor", "no_tumor"],
        }
    )
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 1] = expected[0, 0] = expected[2, 2] = expected[3, 2] = 1
    assert np.array_equal(_confusion(predictions, classes), expected)


def test_image_size_section_shows_the_classes_sizes_the_warning_and_recall_on_either_side():
    from braintumor.evaluation.report import _image_size_section

    classes = ["glioma_tumor", "no_tumor"]
    validation = {
        "image_size_shift": {
            "glioma_tumor": {
                "training_sizes": 1,
                "training_top_size": "512x512",
                "training_top_share": 1.0,
                "test_n": 100,
                "test_size_seen": 0.18,
            },
            "no_tumor": {
                "training_sizes": 231,
                "training_top_size": "236x236",
                "training_top_share": 0.12,
                "test_n": 105,
                "test_size_seen": 1.0,
            },
        },
        "image_size_warnings": ["Testing's glioma_tumor scans: 18% of 100 have an image size found among ..."],
    }

    def group(n, accuracy, recalls_supports):
        return {
            "n": n,
            "accuracy": accuracy,
            "per_class": {
                c: {"recall": r, "support": s, "precision": 1.0, "f1": 1.0}
                for c, (r, s) in zip(classes, recalls_supports)
            },
        }

    evaluation = {
        "by_image_size": {
            "seen": group(123, 0.95, [(17 / 18, 18), (0.95, 105)]),
            "unseen": group(82, 0.38, [(31 / 82, 82), (0.0, 0)]),
        },
        "leak_free": {
            "by_image_size": {
                "seen": group(1, 1.0, [(0.0, 0), (1.0, 1)]),
                "unseen": group(80, 0.39, [(31 / 80, 80), (0.0, 0)]),
            }
        },
    }
    page = _image_size_section(validation, Evaluation.from_dict(evaluation), classes)
    assert "<td>512x512 (100%)</td><td>100</td><td>18%</td>" in page and "<td>236x236 (12%)</td>" in page
    assert page.count("class=warn") == 1 and "Testing&#x27;s glioma_tumor scans: 18% of 100" in page
    assert "<th>leak-free: seen</th><th>leak-free: unseen</th>" in page
    assert "<td>recall glioma_tumor</td><td>0.94 of 18</td><td>0.38 of 82</td><td>n/a</td><td>0.39 of 80</td>" in page
    assert "<td>recall no_tumor</td><td>0.95 of 105</td><td>n/a</td><td>1.00 of 1</td><td>n/a</td>" in page
    del evaluation["leak_free"]  # an eval.json without the leak-free split (older): two columns
    assert "leak-free: seen" not in _image_size_section(validation, Evaluation.from_dict(evaluation), classes)


def test_external_section_says_how_scans_at_unseen_sizes_fare():
    from braintumor.evaluation.report import _external_section

    def group(n, accuracy):
        return {"n": n, "accuracy": accuracy, "per_class": {}}

    external = {
        "path": "data/External",
        "n": 50,
        "exact_in_train": 1,
        "near_in_train": 2,
        "n_excluded": 0,
        "copy_free": {"n": 47},
        "per_class": {},
        "by_image_size": {"seen": group(30, 0.9), "unseen": group(20, 0.55)},
    }
    page = _external_section(ExternalScores.from_dict(external), ["glioma_tumor"])
    assert (
        "20 of the external scans have an image size no Training scan of their class has (another source, "
        "likely): accuracy 0.550 on them, 0.900 on the 30 others."
    ) in page
    external["by_image_size"]["unseen"] = group(0, None)
    assert "image size" not in _external_section(ExternalScores.from_dict(external), ["glioma_tumor"])


def test_report_title_names_the_run_and_its_model_version():
    info = {"run_id": "0123abcd", "registered_model": "brain-tumor-classifier", "model_version": "2"}
    tags = {"mlflow.runName": "train.lr=0.003", "promotion": "champion"}
    assert run_title(info, tags) == 'run "train.lr=0.003" · brain-tumor-classifier version 2 (champion)'
    assert run_title({**info, "model_version": None}, {}) == 'run "0123abcd"'
