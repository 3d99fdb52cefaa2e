"""The paper's "All attacks" rows (abs_spec 1.1, from the co-author's figure data): median
distance and accuracy at the threshold, per norm and model, for results files to cite."""

from __future__ import annotations

# norm -> model -> (median, accuracy at threshold)
ALL_ATTACKS: dict[str, dict[str, tuple[float, float]]] = {
    "l2": {
        "cnn": (1.09, 0.08),
        "binary_cnn": (0.86, 0.03),
        "nearest_neighbor": (1.54, 0.53),
        "madry": (1.36, 0.35),
        "binary_abs": (1.33, 0.39),
        "abs": (2.24, 0.80),
    },
    "linf": {
        "cnn": (0.075, 0.0),
        "binary_cnn": (0.34, 0.63),
        "nearest_neighbor": (0.19, 0.22),
        "madry": (0.34, 0.87),
        "binary_abs": (0.44, 0.77),
        "abs": (0.23, 0.08),
    },
    "l0": {
        "cnn": (8.7, 0.19),
        "binary_cnn": (10.7, 0.38),
        "nearest_neighbor": (10.0, 0.34),
        "madry": (4.0, 0.0),
        "binary_abs": (21.3, 0.77),
        "abs": (16.3, 0.69),
    },
}
