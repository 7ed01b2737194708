import hashlib
import json

import pytest

from diffinv.workflow.data import MANIFEST_COLUMNS, fetch_images, read_manifest, select_images, write_manifest
from diffinv.workflow.download import ChecksumError, Lockfile
from httpserver import http_server, loopback_only  # noqa: F401  (fixtures)

pytestmark = pytest.mark.usefixtures("loopback_only")

IDS = [397133, 37777, 252219, 87038, 174482, 403385]  # real COCO val2017 ids, shuffled order
NO_CAPTION = 6471


@pytest.fixture
def captions_json(tmp_path):
    """COCO captions layout: images[] (id, file_name, coco_url, size) and annotations[] (image_id, caption)."""
    images = [{"id": i, "file_name": f"{i:012d}.jpg", "coco_url": f"http://images.cocodataset.org/val2017/{i:012d}.jpg",
               "width": 640, "height": 480, "license": 1} for i in IDS + [NO_CAPTION]]
    annotations = []
    for k, i in enumerate(IDS):
        annotations += [{"image_id": i, "id": 10 * k, "caption": f"  first caption of\n{i} \n"},
                        {"image_id": i, "id": 10 * k + 1, "caption": f"second caption of {i}"}]
    annotations.insert(0, {"image_id": IDS[0], "id": 99, "caption": "  "})  # blank: not a caption
    path = tmp_path / "captions_val2017.json"
    path.write_text(json.dumps({"info": {}, "images": images, "annotations": annotations}))
    return path


def test_select_images_is_deterministic_and_uses_first_caption(captions_json):
    a = select_images(captions_json, 3, seed=0)
    assert a == select_images(captions_json, 3, seed=0)
    assert [r["id"] for r in a] == sorted((r["id"] for r in a), key=int)
    assert {r["id"] for r in a} != {r["id"] for r in select_images(captions_json, 3, seed=1)}
    for row in a:
        assert row["caption"] == f"first caption of {row['id']}"
        assert row["file_name"] == f"{int(row['id']):012d}.jpg" and row["url"].endswith(row["file_name"])
    everything = select_images(captions_json, len(IDS), seed=5)
    assert sorted(int(r["id"]) for r in everything) == sorted(IDS)  # never the uncaptioned image
    assert all(r["caption"] == f"first caption of {r['id']}" for r in everything)  # blank one skipped


def test_select_images_too_many(captions_json):
    with pytest.raises(ValueError) as info:
        select_images(captions_json, 7, seed=0)
    assert str(captions_json) in str(info.value) and "7" in str(info.value) and "6" in str(info.value)


def _rows():
    return [{"id": "1", "file": "a/1.jpg", "url": "http://x/1.jpg", "caption": 'a "quoted", caption',
             "sha256": "0" * 64, "status": "ok"},
            {"id": "2", "file": "2.jpg", "url": "http://x/2.jpg", "caption": "", "sha256": "",
             "status": "error: HTTP 404"}]


def test_manifest_round_trip(tmp_path):
    path = tmp_path / "manifest.csv"
    write_manifest(_rows(), path)
    assert read_manifest(path) == _rows()
    assert b"\r" not in path.read_bytes() and path.read_text().splitlines()[0] == ",".join(MANIFEST_COLUMNS)


def test_manifest_extra_columns_follow_the_standard_ones(tmp_path):
    path = tmp_path / "manifest.csv"
    rows = [row | {"crop": "0 0 8 8"} for row in _rows()]
    write_manifest(rows, path, extra=("crop",))
    assert read_manifest(path) == rows
    assert path.read_text().splitlines()[0] == ",".join((*MANIFEST_COLUMNS, "crop"))
    with pytest.raises(ValueError, match="crop"):  # unless declared, an extra column is an error
        write_manifest(rows, tmp_path / "other.csv")
    with pytest.raises(ValueError, match=r"lacks columns \['crop'\]"):
        write_manifest(_rows(), tmp_path / "other.csv", extra=("crop",))


@pytest.mark.parametrize("change, message", [({"id": "1"}, "duplicate id '1'"),
                                             ({"file": "../x.jpg"}, "'../x.jpg'"),
                                             ({"file": "/etc/x.jpg"}, "'/etc/x.jpg'"),
                                             ({"id": ""}, "empty id")])
def test_manifest_rejects_bad_rows(tmp_path, change, message):
    rows = _rows()
    rows[1] |= change
    path = tmp_path / "manifest.csv"
    write_manifest(rows, path)
    with pytest.raises(ValueError) as info:
        read_manifest(path)
    assert f"{path}, line 3" in str(info.value) and message in str(info.value)


def test_manifest_missing_column(tmp_path):
    path = tmp_path / "manifest.csv"
    path.write_text("id,file,url,caption,sha256\n1,a.jpg,u,c,s\n")
    with pytest.raises(ValueError, match="status"):
        read_manifest(path)


def test_fetch_images(http_server, tmp_path):
    images = {f"/val/{i}.jpg": f"jpeg bytes {i}".encode() for i in (1, 2, 3)}
    for path, body in images.items():
        http_server.add(path, body)
    rows = [{"id": str(i), "file_name": f"{i}.jpg", "url": http_server.url_for(f"/val/{i}.jpg"),
             "caption": f"c{i}"} for i in (1, 2, 3, 4)]  # 4 is not served: 404
    lock = Lockfile(tmp_path / "images.lock.csv")
    out = fetch_images(rows, tmp_path / "images", lock, retries=2, timeout=5)

    assert [r["status"] for r in out[:3]] == ["ok"] * 3
    assert out[3]["status"].startswith("error: ") and "404" in out[3]["status"] and out[3]["sha256"] == ""
    for r in out[:3]:
        body = images[f"/val/{r['id']}.jpg"]
        assert set(r) == set(MANIFEST_COLUMNS) and r["file"] == f"{r['id']}.jpg"
        assert (tmp_path / "images" / r["file"]).read_bytes() == body
        assert r["sha256"] == hashlib.sha256(body).hexdigest() == Lockfile(lock.path).expected(r["file"])
    assert Lockfile(lock.path).expected("4.jpg") is None

    # Second run: files on disk that match the lock cost no request.
    before = sum(http_server.counts.values())
    assert fetch_images(rows, tmp_path / "images", Lockfile(lock.path), retries=1) == out
    assert sum(http_server.counts.values()) - before == 1  # only the 404 again

    # The server now serves different bytes for 2.jpg: a fresh download must not be trusted.
    http_server.add("/val/2.jpg", b"tampered")
    with pytest.raises(ChecksumError) as info:
        fetch_images(rows, tmp_path / "fresh", Lockfile(lock.path), retries=1)
    assert str(lock.path) in str(info.value) and "2.jpg" in str(info.value)
    assert out[1]["sha256"] in str(info.value) and hashlib.sha256(b"tampered").hexdigest() in str(info.value)
    assert not (tmp_path / "fresh" / "2.jpg").exists()


def test_fetch_images_refuses_path_escape(tmp_path):
    rows = [{"id": "1", "file_name": "../1.jpg", "url": "http://127.0.0.1:9/1.jpg", "caption": ""}]
    with pytest.raises(ValueError, match=r"\.\./1\.jpg"):
        fetch_images(rows, tmp_path / "images", Lockfile(tmp_path / "lock.csv"))
