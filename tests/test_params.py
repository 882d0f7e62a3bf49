"""params.yaml schema: errors name the file, the key and the value."""
import pytest
import yaml

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
    ({"explain": {"jobs": [{"method": "kernel_shap", "targets": "persons", "regions": "none"}]}},
     r"explain\.jobs\[0\]: .*kernel_shap needs regions"),
    ({"explain": {"jobs": [{"method": "shap", "targets": "persons"}]}}, r"explain\.jobs\[0\]\.method: .*'shap'"),
    ({"explain": {"jobs": [{"method": "drise", "targets": "classes", "regions": "none"}]}},
     r"explain\.jobs\[0\]: .*use rise for classes"),
    ({"explain": {"jobs": [{"method": "occlusion", "targets": "persons"}, {"method": "occlusion",
                                                                           "targets": "persons"}]}},
     r"explain\.jobs\[1\]: a second 'occlusion@parts' job on 'persons'"),
    ({"explain": {"jobs": [{"method": "bayes_shapley", "targets": "persons", "options": {"decay": 2}}]}},
     r"explain\.jobs\[0\]: .*bayes_shapley options \{'decay': 2\}: decay must lie in \(0, 1\), got 2"),
    ({"explain": {"jobs": [{"method": "kernel_shap", "targets": "persons", "options": {"grid": 8}}]}},
     r"explain\.jobs\[0\]: .*kernel_shap has no option among \['grid'\]"),
    ({"explain": {"jobs": [{"method": "rise", "targets": "classes", "regions": "none",
                            "options": {"perturbation": "fog"}}]}},
     r"explain\.jobs\[0\]: .*rise options .*fog"),
    ({"explain": {"detector": "rcnn"}}, r"explain\.detector: not an id of infer\.detectors"),
    ({"explain": {"runner": {"kind": "ray"}}}, r"explain\.runner\.kind: .*'ray'"),
])
def test_model_sections_validated(data, expected):
    with pytest.raises(ParamsError, match=expected):
        parse_params(data)
