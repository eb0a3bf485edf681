import pytest

from recon.errors import OptionsError
from recon.options import CostFunction, ReconOptions


def test_json_round_trip_keeps_every_field():
    options = ReconOptions(iterations=7, cost="gaussian", refine_probe=False, devices=2)
    again = ReconOptions.from_json(options.to_json())
    assert again == options
    assert again.cost is CostFunction.GAUSSIAN


def test_unknown_key_is_rejected_naming_the_known_ones():
    with pytest.raises(OptionsError, match=r"unknown reconstruction option\(s\) iters.*iterations"):
        ReconOptions.from_dict({"iters": 5})


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"iterations": 0}, "iterations=0 must be an integer >= 1"),
        ({"iterations": 2.5}, "iterations=2.5"),
        ({"devices": 0}, "devices=0"),
        ({"cost": "l2"}, "cost='l2' is not one of: poisson, gaussian"),
        ({"backend": "tpu"}, "backend='tpu'"),
        ({"refine_probe": "yes"}, "refine_probe='yes'"),
    ],
)
def test_bad_values_get_specific_errors(values, message):
    with pytest.raises(OptionsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ReconOptions.from_dict(values)
