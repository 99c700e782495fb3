"""Gin plumbing: file search, overrides, and errors that name the culprit."""

import gin
import pytest

from embed_jax import gin_config, partitioning  # partitioning registers create_mesh.


def test_every_shipped_gin_file_parses():
  files = sorted(gin_config.configs_dir().rglob("*.gin"))
  for path in files:
    gin.clear_config(clear_constants=True)
    gin_config.parse([str(path)], finalize=False)


def test_unknown_binding_is_named_with_suggestion():
  with pytest.raises(gin_config.GinConfigError, match=r"--gin.create_mesj.data=2.*create_mesh"):
    gin_config.parse([], ["create_mesj.data=2"])


def test_unknown_parameter_is_named():
  with pytest.raises(gin_config.GinConfigError, match="doesn't have a parameter named 'dta'"):
    gin_config.parse([], ["create_mesh.dta=2"])


def test_missing_file_names_the_places_tried():
  with pytest.raises(gin_config.GinConfigError, match="no_such.gin.*not found.*configs"):
    gin_config.parse(["no_such.gin"])


def test_plain_text_values_become_strings(tmp_path):
  @gin.configurable
  def _takes_path(path=None, size=None):
    return path, size

  gin_config.parse([], ["_takes_path.path=/tmp/run dir", "_takes_path.size=3"])
  assert _takes_path() == ("/tmp/run dir", 3)


def test_files_then_overrides(tmp_path):
  config = tmp_path / "mesh.gin"
  config.write_text("import embed_jax.partitioning\ncreate_mesh.data = 2\ncreate_mesh.fsdp = 4\n")
  gin_config.parse([str(config)], ["create_mesh.fsdp = -1"])
  mesh = partitioning.create_mesh()
  assert dict(mesh.shape) == {"data": 2, "fsdp": 4, "tensor": 1}


def test_includes_resolve_in_configs_quietly_and_a_missing_one_is_named(tmp_path, caplog):
  good = tmp_path / "good.gin"
  good.write_text("include 'models/tiny.gin'\n")
  gin_config.parse([str(good)])
  assert not [r for r in caplog.records if r.levelname == "ERROR"]
  gin.clear_config()
  bad = tmp_path / "bad.gin"
  bad.write_text("include 'models/no_such.gin'\n")
  with pytest.raises(gin_config.GinConfigError, match=r"bad.gin.*models/no_such.gin"):
    gin_config.parse([str(bad)])
