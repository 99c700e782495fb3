"""Runs `gcp_storage_emulator` with the object generation in its download headers.

Real GCS sends `x-goog-generation` with every object read; tensorstore (orbax's
OCDBT checkpoints) uses it for its conditional manifest updates and calls a
read without it a "Malformed StorageGeneration". The emulator omits the
header, so this adds it; everything else is the emulator's own.

    python tests/cloud/emulator_main.py start --host localhost --port P --in-memory ...
"""

import runpy

from gcp_storage_emulator.handlers import objects

_download = objects.download


def _download_with_generation(request, response, storage, *args, **kwargs):
  _download(request, response, storage, *args, **kwargs)
  try:
    obj = storage.get_file_obj(request.params["bucket_name"], request.params["object_id"])
  except Exception:  # pylint: disable=broad-except  # Not found: the emulator answered 404.
    return
  response["x-goog-generation"] = str(obj["generation"])
  response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))


objects.download = _download_with_generation

if __name__ == "__main__":
  runpy.run_module("gcp_storage_emulator", run_name="__main__", alter_sys=True)
