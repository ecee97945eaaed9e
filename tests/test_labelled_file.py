import pytest

from edge_eigenlora.errors import EdgeEigenLoraError
from edge_eigenlora.labelled_file import read_labelled_file


def test_csv_and_jsonl_give_the_same_examples(tmp_path):
    (tmp_path / "a.csv").write_text('text,label\n"good, really",pos\nbad,neg\nfine,pos\n')
    (tmp_path / "a.jsonl").write_text(
        '{"text": "good, really", "label": "pos"}\n{"text": "bad", "label": "neg"}\n\n'
        '{"text": "fine", "label": "pos"}\n'
    )
    a, b = read_labelled_file(tmp_path / "a.csv"), read_labelled_file(tmp_path / "a.jsonl")
    assert a == b and a.labels == [1, 0, 1] and a.label_names == ["neg", "pos"]


def test_integer_labels_sort_numerically_and_split_is_disjoint(tmp_path):
    lines = ["text,label"] + [f"t{i},{i % 11}" for i in range(40)]
    (tmp_path / "n.csv").write_text("\n".join(lines))
    data = read_labelled_file(tmp_path / "n.csv")
    assert data.label_names[:3] == ["0", "1", "2"] and data.label_names[-1] == "10"
    train, val = data.split(0.25, seed=0)
    assert (len(train.texts), len(val.texts)) == (30, 10) and not set(train.texts) & set(val.texts)
    assert data.split(0.25, seed=0) == (train, val) and data.split(0.25, seed=1) != (train, val)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("e.csv", "", r"e.csv holds no examples"),
        ("h.csv", "sentence,y\nhi,1\n", r"h.csv: the header must name columns 'text' and 'label'"),
        ("j.jsonl", '{"text": "a", "label": 1}\n{oops\n', r"j.jsonl:2: not valid JSON"),
        ("k.jsonl", '{"text": "a"}\n', r'k.jsonl:1: each line must be an object with "text" and "label"'),
        ("t.csv", "text,label\n ,pos\nb,neg\n", r"t.csv:2: field 'text' is empty"),
        ("s.csv", "text,label\na,pos\nb,pos\n", r"s.csv: all examples have the same label"),
        ("x.txt", "a\n", r"unknown file type '.txt'"),
    ],
)
def test_malformed_files_are_refused_with_file_and_line(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(EdgeEigenLoraError, match=message):
        read_labelled_file(tmp_path / name)


def test_labels_outside_the_tasks_labels_are_refused(tmp_path):
    (tmp_path / "a.csv").write_text("text,label\na,pos\nb,maybe\n")
    with pytest.raises(EdgeEigenLoraError, match=r"a.csv:3: label 'maybe' is not one of the task's labels"):
        read_labelled_file(tmp_path / "a.csv", label_names=["neg", "pos"])
