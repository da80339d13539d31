"""Every group leader serves grpc.health.v1.Health (what Kubernetes' gRPC probe asks): SERVING
while its engine runs; an unknown service name is NOT_FOUND."""

import grpc


def test_worker_health(served, api):
    groups = served.status().groups
    assert groups, served.status()
    for g in groups:
        with grpc.insecure_channel(g.address) as ch:
            h = api.health_rpc.HealthStub(ch)
            for service in ("", "tessera.v1.Worker"):
                r = h.Check(api.health_pb.HealthCheckRequest(service=service), timeout=10)
                assert r.status == api.health_pb.HealthCheckResponse.SERVING, (g.group, service, r)
            try:
                h.Check(api.health_pb.HealthCheckRequest(service="nope"), timeout=10)
                raise AssertionError("an unknown service was answered")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.NOT_FOUND, e
