"""The committed gRPC modules are exactly what grpc_tools.protoc generates from the proto."""

from pathlib import Path

import pytest

from moe_swarm.serve import codegen

PROTO_DIR = Path(codegen.__file__).parent / "proto"


@pytest.mark.parametrize("name", codegen.GENERATED)
def test_generated_code_is_up_to_date(tmp_path, name):
    generated = codegen.generate(tmp_path)
    fresh = next(p for p in generated if p.name == name)
    committed = PROTO_DIR / name
    assert committed.is_file(), f"{committed} is missing: run python -m moe_swarm.serve.codegen"
    assert fresh.read_bytes() == committed.read_bytes(), (
        f"{committed} is stale: run python -m moe_swarm.serve.codegen and commit the result"
    )


def test_generated_grpc_module_imports_by_package_path():
    from moe_swarm.serve.proto import mcp_pb2, mcp_pb2_grpc

    text = (PROTO_DIR / "mcp_pb2_grpc.py").read_text()
    assert "from moe_swarm.serve.proto import mcp_pb2" in text
    assert mcp_pb2_grpc.MCPControlStub is not None
    assert mcp_pb2.DESCRIPTOR.package == "mcp"


def test_seed_messages_keep_their_field_numbers_and_types():
    """The wire contract of the seed: same names, numbers and types (new fields only added)."""
    from google.protobuf.descriptor import FieldDescriptor as F

    from moe_swarm.serve.proto import mcp_pb2

    expected = {
        "TrainRequest": {"config_path": (1, F.TYPE_STRING)},
        "TrainResponse": {"success": (1, F.TYPE_BOOL), "log": (2, F.TYPE_STRING)},
        "BenchmarkRequest": {"num_samples": (1, F.TYPE_INT32)},
        "BenchmarkResponse": {"results": (1, F.TYPE_MESSAGE)},
        "BenchmarkResult": {"metric": (1, F.TYPE_STRING), "value": (2, F.TYPE_DOUBLE)},
        "InferRequest": {"prompt": (1, F.TYPE_STRING)},
        "InferResponse": {"output": (1, F.TYPE_STRING)},
    }
    for message, fields in expected.items():
        desc = mcp_pb2.DESCRIPTOR.message_types_by_name[message]
        for name, (number, ftype) in fields.items():
            field = desc.fields_by_name[name]
            assert (field.number, field.type) == (number, ftype), f"{message}.{name} changed on the wire"
    service = mcp_pb2.DESCRIPTOR.services_by_name["MCPControl"]
    assert service.full_name == "mcp.MCPControl"
    for rpc, (req, resp) in {
        "StartTraining": ("TrainRequest", "TrainResponse"),
        "RunBenchmark": ("BenchmarkRequest", "BenchmarkResponse"),
        "RunInference": ("InferRequest", "InferResponse"),
    }.items():
        m = service.methods_by_name[rpc]
        assert (m.input_type.name, m.output_type.name) == (req, resp)
        assert not m.client_streaming and not m.server_streaming
    repeated = mcp_pb2.DESCRIPTOR.message_types_by_name["BenchmarkResponse"].fields_by_name["results"]
    assert repeated.is_repeated and repeated.message_type.name == "BenchmarkResult"
