"""The committed stubs must equal a fresh generation (run `make protos` after editing the .proto)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = ("ranking_pb2.py", "ranking_pb2.pyi", "ranking_pb2_grpc.py", "rollout_pb2.py", "rollout_pb2.pyi",
         "rollout_pb2_grpc.py")


def test_committed_stubs_match_regeneration(tmp_path):
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{ROOT}", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", "protos/adrank/v1/ranking.proto",
                    "protos/adrank/v1/rollout.proto"],
                   check=True, cwd=ROOT)
    for name in STUBS:
        fresh = (tmp_path / "protos/adrank/v1" / name).read_text()
        committed = (ROOT / "protos/adrank/v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run `make protos`"


def test_service_full_name():
    from protos.adrank.v1 import ranking_pb2

    assert ranking_pb2.DESCRIPTOR.services_by_name["AdRanking"].full_name == "adrank.v1.AdRanking"
