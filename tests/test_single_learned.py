"""`xai-audit explain IMAGE --method M` (flows.single.explain_file) with a learned explainer (RExL, FastSHAP): its
trained file is an explain job's option, so the one-image command refuses it by name, before reading anything."""
from flows.cli import main
from flows.single import explain_file

import pytest

from explainers.registry import METHODS

LEARNED = sorted(name for name, cls in METHODS.items() if cls.needs_trained_weights)


def test_rexl_and_fastshap_are_among_the_learned_methods():
    assert {"rexl", "fastshap", "fastshap_bayes"} <= set(LEARNED)


@pytest.mark.parametrize("method", LEARNED)
def test_a_learned_method_is_refused_before_the_params_image_or_model_are_read(method, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError) as err:
        explain_file(str(missing / "image.png"), model="demo-scene", method=method,
                     params_file=str(missing / "params.yaml"))
    cls = METHODS[method]
    assert str(err.value) == (f"--method {method}: a learned explainer needs its trained file (option "
                              f"{cls.trained_file_option!r}: {cls.trained_file_hint}); run it as an explain job")
    assert cls.trained_file_option in ("policy", "weights") and cls.trained_file_hint


def test_the_cli_says_so_and_exits_2(tmp_path, capsys):
    assert main(["explain", str(tmp_path / "image.png"), "--method", "rexl", "--params",
                 str(tmp_path / "params.yaml")]) == 2
    err = capsys.readouterr().err
    assert "xai-audit explain: error: --method rexl: a learned explainer needs its trained file (option 'policy'" in err
    assert "Traceback" not in err
