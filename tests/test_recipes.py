"""Recipes and the registry: every recipe loads, and bad recipes say what is wrong."""
import pytest

from kiln import registry
from kiln.errors import InvalidArgumentError
from kiln.recipe import all_recipes, load_recipe

EXPECTED = {"minilm-feature-extraction", "bert-text-classification", "bert-token-classification",
            "bert-question-answering"}


def test_every_recipe_loads_and_matches_the_registry():
    names = set()
    for path in all_recipes():
        r = load_recipe(path)
        names.add(r.name)
        assert path.stem == r.name, "a recipe file is named after its deployable"
        entry = r.entry
        assert set(r.dims) == set(entry.dims)
        for spec in entry.input_specs(entry.config_cls()()):  # a default config of the family
            assert all(d in r.dims for d in spec.shape if isinstance(d, str))
        assert set(r.formats) == {"torchscript", "onnx", "aoti"}
        assert "fp32" in r.tolerances
        if r.random_head and entry.has_labels:
            assert r.labels, f"{r.name}: a random head needs labels"
    assert EXPECTED <= names


def test_recipe_by_name_and_unknown_name():
    assert load_recipe("bert-question-answering").task == "question-answering"
    with pytest.raises(InvalidArgumentError, match="no-such-recipe.*known recipes: .*minilm"):
        load_recipe("no-such-recipe")


def _write(tmp_path, body):
    p = tmp_path / "r.toml"
    p.write_text('name = "r"\nfamily = "bert"\ntask = "text-classification"\n'
                 'checkpoint = "x"\n' + body)
    return p


@pytest.mark.parametrize("body, message", [
    ('labels = ["a"]\nbogus = 1\n', r"unknown key\(s\) \['bogus'\]"),
    ('[dims]\nwidth = { min = 1, opt = 1, max = 2 }\n', r"'width' is not a dim .*expected one of"),
    ('[dims]\nbatch = { min = 4, opt = 2, max = 8 }\n', r"min=4 opt=2 max=8: expected 0 <= min <= opt <= max"),
    ('formats = ["torchscript", "coreml"]\n', r"unknown format\(s\) \['coreml'\]"),
    ('[task_options]\nnormalize = true\n', r"task option 'normalize' is not one of"),
    ('this is not toml', r"not valid TOML"),
])
def test_bad_recipes_name_the_problem(tmp_path, body, message):
    with pytest.raises(InvalidArgumentError, match=message):
        load_recipe(_write(tmp_path, body))


def test_unknown_family_task_lists_known_ones(tmp_path):
    p = tmp_path / "r.toml"
    p.write_text('name = "r"\nfamily = "bert"\ntask = "translation"\ncheckpoint = "x"\n')
    with pytest.raises(InvalidArgumentError, match=r"task='translation'.*known: .*bert/text-classification"):
        load_recipe(p)


def test_registry_output_specs_follow_the_config():
    class C:  # the attributes output specs read
        num_labels, hidden_size, vocab_size = 3, 64, 100
    assert registry.get("bert", "token-classification").outputs(C)[0].shape == ("batch", "sequence", 3)
    assert registry.get("bert", "feature-extraction").outputs(C)[0].shape == ("batch", 64)
    assert [s.name for s in registry.get("bert", "question-answering").outputs(C)] == \
        ["start_logits", "end_logits"]
