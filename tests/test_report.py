"""The report's tables come from the evaluation's own functions."""

import numpy as np
import pandas as pd

from braintumor.report import _confusion


def test_report_confusion_counts_rows_as_actual_and_columns_as_predicted_in_class_order():
    classes = ["glioma_tumor", "meningioma_tumor", "no_tumor", "pituitary_tumor"]
    predictions = pd.DataFrame({"actual": ["glioma_tumor", "glioma_tumor", "no_tumor", "pituitary_tumor"],
                                "predicted": ["meningioma_tumor", "glioma_tumor", "no_tumor", "no_tumor"]})
    expected = np.zeros((4, 4), dtype=int)
    expected[0, 1] = expected[0, 0] = expected[2, 2] = expected[3, 2] = 1
    assert np.array_equal(_confusion(predictions, classes), expected)
