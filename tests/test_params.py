"""params.yaml schema: errors name the file, the key and the value."""
import re

import pytest
import yaml

from tasks.explain_jobs import check_jobs
from tasks.params import ParamsError, load_params, parse_params
from tests.conftest import REPO


def test_repository_params_are_valid():
    params = load_params(REPO / "params.yaml")
    assert params.pull.source == "synthetic" and params.pull.synthetic.n_images >= 200


@pytest.mark.parametrize("data, expected", [
    ({"pull": {"synthetic": {"n_imagez": 5}}}, r"params.yaml: pull\.synthetic\.n_imagez: unknown key \(got 5\)"),
    ({"seedd": 1}, r"seedd: unknown key"),
    ({"seed": "abc"}, r"seed: .*valid integer.*\(got 'abc'\)"),
    ({"pull": {"shard_size": 0}}, r"pull\.shard_size: .*greater than or equal to 1 \(got 0\)"),
    ({"pull": {"source": "s3"}}, r"pull\.source: .*\(got 's3'\)"),
    ({"pull": {"source": "coco"}}, r"section pull\.coco is missing"),
    ({"pull": {"synthetic": {"persons_per_image": [3, 1]}}}, r"pull\.synthetic\.persons_per_image: .*\[3, 1\]"),
    ({"pull": {"limits": {"max_pixels": -1}}}, r"pull\.limits\.max_pixels"),
    ({"pull": {"source": "coco", "coco": {"annotations": "a.json"}}}, r"pull\.coco\.images_dir: Field required"),
    ({"parts": {"grouping": "parts3"}}, r"parts\.grouping: .*\(got 'parts3'\)"),
    ({"parts": {"detectors": ["demo-yolo", "rcnn"]}},
     r"parts\.detectors\[1\]: not an id of infer\.detectors \['demo-yolo'\] \(got 'rcnn'\)"),
])
def test_schema_errors_name_key_and_value(data, expected):
    with pytest.raises(ParamsError, match=expected):
        parse_params(data)


def test_missing_input_file_is_named(in_tmp):
    (in_tmp / "images").mkdir()
    with pytest.raises(ParamsError, match=r"pull\.coco\.annotations: file not found \(got 'nope\.json'\)"):
        parse_params({"pull": {"source": "coco", "coco": {"annotations": "nope.json", "images_dir": "images"}}})
    # with a DVC source the paths are inside the fetched folder, so they are checked after the fetch
    parse_params({"pull": {"source": "coco", "coco": {"annotations": "nope.json", "images_dir": "images"},
                           "dvc": {"url": "somewhere", "path": "data"}}})


def test_load_params_file_errors(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "p.yaml"
    bad.write_text("pull: [1, 2\n")
    with pytest.raises(ParamsError, match=r"p\.yaml: invalid YAML"):
        load_params(bad)
    bad.write_text(yaml.safe_dump({"pull": {"out_dirr": "x"}}))
    with pytest.raises(ParamsError, match=r"p\.yaml: pull\.out_dirr: unknown key"):
        load_params(bad)


@pytest.mark.parametrize("data, expected", [
    ({"infer": {"detectors": [{"id": "a", "weights": "x.pt"}, {"id": "a", "weights": "y.pt"}]}},
     r"infer: .*model ids must be unique"),
    ({"infer": {"detectors": [{"id": "a", "kind": "torchvision", "weights": "x.pth"}]}},
     r"infer\.detectors\[0\]: .*needs 'arch'"),
    ({"infer": {"classifier": {"id": "c", "kind": "timm", "weights": "c.pth", "arch": "resnet18"}}},
     r"infer\.classifier: .*needs 'classes'"),
    ({"models": {"detector": {"epochs": 0}}}, r"models\.detector\.epochs: .*greater than or equal to 1"),
    ({"models": {"detector": {"init_from_poze": True}}}, r"models\.detector\.init_from_poze: unknown key"),
    ({"explain": {"jobs": [{"method": "occlusion", "targets": "persons"}, {"method": "occlusion",
                                                                           "targets": "persons"}]}},
     r"explain\.jobs\[1\]: a second 'occlusion@parts' job on 'persons'"),
    ({"explain": {"detector": "rcnn"}}, r"explain\.detector: not an id of infer\.detectors"),
    ({"explain": {"runner": {"kind": "ray"}}}, r"explain\.runner\.kind: .*'ray'"),
])
def test_model_sections_validated(data, expected):
    with pytest.raises(ParamsError, match=expected):
        parse_params(data)


# ---------------------------------------------------------------------------------------------- YAML 1.2 as DVC
DVC_STYLE = """\
seed: 010                  # YAML 1.2: decimal 10 (YAML 1.1 / PyYAML: octal 8)
explain:
  jobs:
    - {method: kernel_shap, targets: persons, regions: parts, options: {ridge: 1e-2}}
    - {method: drise, targets: persons, regions: none, options: {p: 5e-1, grid: 4}}
"""


def test_params_are_read_as_dvc_reads_them(tmp_path):
    """params.yaml is YAML 1.2 for DVC (ruamel.yaml): 1e-2 is a float, 010 is ten. The pipeline reads it the same
    way, so `dvc params diff` and the stages see the same numbers."""
    from dvc.utils.serialize import parse_yaml

    path = tmp_path / "params.yaml"
    path.write_text(DVC_STYLE)
    params = load_params(path)
    dvc = parse_yaml(DVC_STYLE, str(path))
    assert params.seed == dvc["seed"] == 10
    ridge, p = params.explain.jobs[0].options["ridge"], params.explain.jobs[1].options["p"]
    assert (ridge, p) == (dvc["explain"]["jobs"][0]["options"]["ridge"], dvc["explain"]["jobs"][1]["options"]["p"])
    assert isinstance(ridge, float) and ridge == 0.01 and isinstance(p, float) and p == 0.5


@pytest.mark.parametrize("text, expected", [
    # YAML 1.1 booleans are plain strings in YAML 1.2: a string where a bool is needed is an error, not True
    ("explain:\n  jobs:\n    - {method: drise, targets: persons, regions: none, options: {center: yes}}\n",
     r"explain\.jobs\[0\]\.options: .*drise option 'center': expected a bool \(true / false\), got 'yes'"),
    ("pull:\n  synthetic:\n    p_occluder: 1:30\n", r"pull\.synthetic\.p_occluder: .*\(got '1:30'\)"),
    ("seed: 1\nseed: 2\n", r"invalid YAML .*duplicate key"),
])
def test_yaml_1_1_spellings_are_errors(tmp_path, text, expected):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=expected):
        check_jobs(load_params(path))


def _job(method, options, **extra):
    regions = "none" if method in ("drise", "rise", "decam") else "parts"
    return {"explain": {"jobs": [{"method": method, "targets": "persons", "regions": regions, "options": options,
                                  **extra}]}}


@pytest.mark.parametrize("method, options, expected", [
    ("kernel_shap", {"ridge": "1e-2"}, r"kernel_shap option 'ridge': expected a float, got '1e-2' \(str\)"),
    ("drise", {"p": "0.5"}, r"drise option 'p': expected a float, got '0.5' \(str\)"),
    ("drise", {"grid": True}, r"drise option 'grid': expected an int, got True \(bool\)"),
    ("drise", {"grid": 8.5}, r"drise option 'grid': expected an int, got 8.5 \(float\)"),
    ("drise", {"center": 1}, r"drise option 'center': expected a bool \(true / false\), got 1 \(int\)"),
    ("bayes_shapley", {"decay": float("nan")}, r"bayes_shapley option 'decay': .*finite.*got nan"),
    ("occlusion", {"window": "16"}, r"occlusion option 'window': expected a float or an int, got '16' \(str\)"),
    ("lime", {"perturbation": 3}, r"lime option 'perturbation': expected a str, got 3 \(int\)"),
    ("drise", {"chunk_size": 4}, r"drise option 'chunk_size': set explain\.chunk_size instead"),
])
def test_option_types_checked_against_the_explainer(method, options, expected):
    """Each option's type comes from the explainer's __init__ annotations; a mismatch names job, option and value
    instead of failing inside every explanation."""
    with pytest.raises(ParamsError, match=r"explain\.jobs\[0\]\.options: .*" + expected):
        check_jobs(parse_params(_job(method, options)))


def test_option_types_coerced():
    """An int where a float is expected becomes a float (one config hash for `ridge: 1` and `ridge: 1.0`); an int
    where the explainer distinguishes int from float (occlusion's window: pixels vs fraction) stays an int."""
    ridge = check_jobs(parse_params(_job("kernel_shap", {"ridge": 1}))).explain.jobs[0].options["ridge"]
    assert ridge == 1.0 and type(ridge) is float
    window = check_jobs(parse_params(_job("occlusion", {"window": 16}))).explain.jobs[0].options["window"]
    assert window == 16 and type(window) is int
    window = check_jobs(parse_params(_job("occlusion", {"window": 0.2}))).explain.jobs[0].options["window"]
    assert type(window) is float
    p = check_jobs(parse_params(_job("drise", {"p": 0.25, "grid": 4, "center": False}))).explain.jobs[0].options
    assert p == {"p": 0.25, "grid": 4, "center": False}


@pytest.mark.parametrize("data, expected", [
    ({"explain": {"jobs": [{"method": "kernel_shap", "targets": "persons", "regions": "none"}]}},
     r"explain\.jobs\[0\]: .*kernel_shap needs regions"),
    ({"explain": {"jobs": [{"method": "occlusion", "targets": "persons", "regions": "none"}]}},
     r"explain\.jobs\[0\]: occlusion needs regions \(parts, superpixels or grid\), got 'none'"),
    ({"explain": {"jobs": [{"method": "drise", "targets": "classes", "regions": "none"}]}},
     r"explain\.jobs\[0\]: drise explains detections: use rise for classes"),
    ({"explain": {"jobs": [{"method": "beta_shapley", "targets": "persons"}]}},
     r"explain\.jobs\[0\]\.method: 'beta_shapley' was renamed 'continuous_coalition_shapley' \(it is not Kwon "),
    ({"explain": {"jobs": [{"method": "shap", "targets": "persons"}]}}, r"explain\.jobs\[0\]\.method: .*'shap'"),
    ({"explain": {"jobs": [{"method": "bayes_shapley", "targets": "persons", "options": {"decay": 2}}]}},
     r"explain\.jobs\[0\]: .*bayes_shapley options \{'decay': 2\.0\}: decay must lie in \(0, 1\), got 2\.0"),
    ({"explain": {"jobs": [{"method": "kernel_shap", "targets": "persons", "options": {"grid": 8}}]}},
     r"explain\.jobs\[0\]\.options: .*kernel_shap has no option among \['grid'\]; its options are "
     r"\['n_segments', 'order', 'perturbation', 'ridge'\]"),
    ({"explain": {"jobs": [{"method": "rise", "targets": "classes", "regions": "none",
                            "options": {"perturbation": "fog"}}]}},
     r"explain\.jobs\[0\]: .*rise options .*fog"),
])
def test_explain_job_errors_name_job_option_and_value(data, expected):
    """The explainer-aware checks (tasks.explain_jobs.check_jobs): load_params, which every stage runs, leaves them
    to the stages that import the explainers; check_jobs raises the same messages naming job, option and value."""
    params = parse_params(data)                    # no explainer import: not an error here
    with pytest.raises(ParamsError, match=r"^params\.yaml: " + expected):
        check_jobs(params)
    with pytest.raises(ParamsError, match=expected):
        check_jobs(params.explain)


def test_explain_flow_checks_jobs_before_any_shard(tmp_path):
    """`xai-audit explain` (run_explain) fails on a bad option naming the file, before reading any stage input."""
    from flows.explain import run_explain

    path = tmp_path / "params.yaml"
    path.write_text("explain:\n  out_dir: %s\n  jobs:\n    - {method: drise, targets: persons, regions: none, "
                    "options: {center: yes}}\n" % (tmp_path / "explain"))
    with pytest.raises(ParamsError, match=re.escape(str(path)) + r": explain\.jobs\[0\]\.options: .*drise option "
                                          r"'center': expected a bool"):
        run_explain(path)
    assert not (tmp_path / "explain").exists()


def test_two_jobs_of_one_name_on_the_same_targets_are_refused_unless_labelled():
    """Two jobs whose targets and name agree would write one table and one result-store key: refused naming both;
    a label gives the second its own name (and a RISE job of another budget likewise)."""
    rise = {"method": "rise", "targets": "classes", "regions": "none", "budget": 64}
    with pytest.raises(ParamsError, match=r"explain\.jobs\[1\]: a second 'rise' job on 'classes' \(give one a label"):
        parse_params({"explain": {"jobs": [rise, {**rise, "budget": 512}]}})
    jobs = parse_params({"explain": {"jobs": [rise, {**rise, "budget": 512, "label": "rise_512"},
                                              {**rise, "targets": "persons", "regions": "parts"},
                                              {**rise, "targets": "persons", "regions": "parts", "label": "x.y"}]}}
                        ).explain.jobs
    assert [j.name for j in jobs] == ["rise", "rise_512", "rise@parts", "x.y@parts"]
    with pytest.raises(ParamsError, match=r"label"):
        parse_params({"explain": {"jobs": [{**rise, "label": "two words"}]}})


def test_a_job_name_is_one_method_and_never_a_stage_table():
    """A label may not give a job another method's name (one name, one method: the report reads the method by name)
    nor a stage's own table name (errors, sag: the explanations would be overwritten); guide.audit_jobs is checked
    the same way; an unlabelled job dumps without a label key (stored results keep their keys)."""
    rise = {"method": "rise", "targets": "classes", "regions": "none"}
    with pytest.raises(ParamsError, match=r"explain\.jobs\[1\]: the name 'x' is already a rise job's; give the drise "
                                          r"job another label"):
        parse_params({"explain": {"jobs": [{**rise, "label": "x"},
                                           {"method": "drise", "targets": "persons", "regions": "none",
                                            "label": "x"}]}})
    with pytest.raises(ParamsError, match=r"explain\.jobs\[0\]: the name 'errors' is a stage's own table"):
        parse_params({"explain": {"jobs": [{**rise, "label": "errors"}]}})
    with pytest.raises(ParamsError, match=r"guide\.audit_jobs\[1\]: a second 'rise' job on 'classes'"):
        parse_params({"guide": {"audit_jobs": [rise, rise]}})
    jobs = parse_params({"explain": {"jobs": [rise, {**rise, "label": "r2"}]}}).explain.jobs
    assert "label" not in jobs[0].model_dump() and jobs[1].model_dump()["label"] == "r2"


def test_rexl_policy_errors_name_the_form_given():
    """rexl.<model> is one policy or a list: an error names the key once, in the form given (no union branches)."""
    with pytest.raises(ParamsError, match=r"^params\.yaml: rexl\.detector\.bogus: unknown key \(got 1\)$"):
        parse_params({"rexl": {"detector": {"bogus": 1}}})
    with pytest.raises(ParamsError, match=r"^params\.yaml: rexl\.detector\[0\]\.grid: Input should be greater"):
        parse_params({"rexl": {"detector": [{"grid": 1}]}})
