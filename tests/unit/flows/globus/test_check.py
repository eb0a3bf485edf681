"""``ptychoflow check`` against mocked Globus services: every line ok, and one test per
failure line, asserting on the requests actually sent."""

from __future__ import annotations

import json
import os

import globus_sdk
import pytest
import responses
from globus_compute_sdk.serialize import ComputeSerializer
from globus_sdk.testing import RegisteredResponse

from flows.config import Config, GlobusSettings
from flows.globus import auth
from flows.globus.check import DeploymentChecker
from flows.globus.state import DeploymentState
from functions.code_identity import probe_shared_folder
from tests.unit.flows.globus.sent import sent_requests

ACQUISITION = "a1a1a1a1-0000-4c61-8d0a-6a1e5b7c9d20"
COMPUTE = "c0c0c0c0-0000-4c61-8d0a-6a1e5b7c9d20"
ENDPOINT = "e0e0e0e0-0000-4c61-8d0a-6a1e5b7c9d20"
FLOW_ID = "f0f0f0f0-0000-4c61-8d0a-6a1e5b7c9d20"
FUNCTION_ID = "0f0f0f0f-0000-4c61-8d0a-6a1e5b7c9d20"
IDENTITY_FUNCTION_ID = "1d1d1d1d-0000-4c61-8d0a-6a1e5b7c9d20"
TASK_ID = "7a7a7a7a-0000-4c61-8d0a-6a1e5b7c9d20"
WATCHER = "5d9c3e2e-6b3c-4a6e-9a57-0f9b1f4c8a11"
SUBSCRIPTION = "5b5b5b5b-0000-4c61-8d0a-6a1e5b7c9d20"
LOCAL = {"ptychoflow_version": "0.1.0", "code_hash": "sha256:abc"}
ROOT = "/eagle/project/ptycho"


@pytest.fixture
def config(tmp_path):
    (tmp_path / "acquisition").mkdir()
    (tmp_path / "compute").mkdir()
    return Config(
        backend="globus",
        acquisition_root=tmp_path / "acquisition",
        state_dir=tmp_path / "state",
        globus=GlobusSettings(
            acquisition_collection=ACQUISITION,
            acquisition_base="/beamline",
            compute_collection=COMPUTE,
            compute_base="/ptycho",
            compute_endpoint=ENDPOINT,
            compute_root_on_endpoint=ROOT,
            watcher_client_id=WATCHER,
            subscription_id=SUBSCRIPTION,
        ),
    )


STATE = DeploymentState(
    flow_id=FLOW_ID, function_id=FUNCTION_ID, identity_function_id=IDENTITY_FUNCTION_ID
)


def make_checker(config, state=STATE, app=None):
    authorizer = None if app is not None else globus_sdk.NullAuthorizer()
    kwargs = {"app": app} if app is not None else {"authorizer": authorizer}
    return DeploymentChecker(
        config,
        state,
        flows_client=auth.flows_client(**kwargs),
        run_client=auth.specific_flow_client(FLOW_ID, **kwargs),
        transfer_client=auth.transfer_client(**kwargs),
        compute_client=auth.compute_client(do_version_check=False, **kwargs),
        app=app,
        identity_urn=f"urn:globus:auth:identity:{WATCHER}",
        task_timeout_s=10,
        sleep=lambda seconds: None,
        local_identity=LOCAL,
    )


# -- the services as a healthy deployment answers ----------------------------------------------


def register_collection(collection, *, mkdir_status=200, mkdir_code="DirectoryCreated"):
    RegisteredResponse(
        service="transfer",
        path=f"/v0.10/operation/endpoint/{collection}/mkdir",
        method="POST",
        status=mkdir_status,
        json={"DATA_TYPE": "mkdir_result", "code": mkdir_code, "message": mkdir_code},
    ).add()


def register_delete(status="SUCCEEDED"):
    RegisteredResponse(
        service="transfer", path="/v0.10/submission_id", json={"value": "sub-1"}
    ).add()
    RegisteredResponse(
        service="transfer",
        path="/v0.10/delete",
        method="POST",
        json={"DATA_TYPE": "delete_result", "task_id": "del-1", "code": "Accepted"},
    ).add()
    RegisteredResponse(
        service="transfer", path="/v0.10/task/del-1", json={"task_id": "del-1", "status": status}
    ).add()


class World:
    """The two collections as folders: ``/beamline`` on the acquisition collection is
    the config's acquisition root; ``/ptycho`` on the compute collection is
    ``<tmp>/compute``, which the endpoint's workers see as ``ROOT``. Transfer requests
    copy files between them; the identity task runs the real
    :func:`functions.code_identity.endpoint_identity` on the probe folder.

    ``collection_uid``: the account Transfer uses on the compute collection. When it
    differs from the workers' uid (this process's), Transfer cannot read a file the
    workers left without group/other read permission, as with a guest collection owned
    by another account than the endpoint's (Globus Connect Server: a guest collection
    accesses storage as its owner's local account).
    """

    def __init__(self, config, collection_uid=None):
        self.acquisition = config.acquisition_root
        self.compute = config.acquisition_root.parent / "compute"
        self.collection_uid = os.getuid() if collection_uid is None else collection_uid
        self.transfers = 0

    def local(self, collection, path):
        base, root = (
            ("/beamline", self.acquisition)
            if collection == ACQUISITION
            else ("/ptycho", self.compute)
        )
        assert path.startswith(base + "/"), path
        return root / path[len(base) + 1 :]

    def transfer(self, request):
        body = json.loads(request.body)
        self.transfers += 1
        status = "SUCCEEDED"
        for item in body["DATA"]:
            source = self.local(body["source_endpoint"], item["source_path"])
            target = self.local(body["destination_endpoint"], item["destination_path"])
            readable = source.stat().st_mode & 0o044 or self.collection_uid == source.stat().st_uid
            if body["source_endpoint"] == COMPUTE and not readable:
                status = "FAILED"  # permission denied reading the source
                continue
            target.parent.mkdir(parents=True, exist_ok=True)  # Transfer makes folders
            target.write_bytes(source.read_bytes())
        task_id = f"xfer-{self.transfers}"
        RegisteredResponse(
            service="transfer",
            path=f"/v0.10/task/{task_id}",
            json={"task_id": task_id, "status": status},
        ).add()
        return 202, {}, json.dumps({"DATA_TYPE": "transfer_result", "task_id": task_id})

    def register(self):
        RegisteredResponse(
            service="transfer", path="/v0.10/submission_id", json={"value": "sub-1"}
        ).add()
        responses.add_callback(
            responses.POST, "https://transfer.api.globus.org/v0.10/transfer", callback=self.transfer
        )

    def probe_folder_on_endpoint(self):
        """What the workers see: the probe folder Transfer made, as a path under ROOT."""
        (folder,) = self.compute.glob(".ptychoflow-check-*")
        return folder


@pytest.fixture
def world(config):
    return World(config)


def register_endpoint(status="online"):
    RegisteredResponse(
        service="compute",
        path=f"/v2/endpoints/{ENDPOINT}/status",
        json={"status": status, "details": {}},
    ).add()


def unpack_task(packed):
    """``(args, kwargs)`` of a task as the SDK packs it for ``/v3/endpoints/{id}/submit``
    (length-prefixed serialized buffers, as ``ComputeSerializer.pack_buffers`` writes)."""
    serializer = ComputeSerializer()
    buffers = []
    while packed:
        length, rest = packed.split("\n", 1)
        buffers.append(serializer.deserialize(rest[: int(length)]))
        packed = rest[int(length) :]
    return buffers[-2], buffers[-1]


def register_task(answer=None, *, world=None, function_status=200, submit_status=200):
    RegisteredResponse(
        service="compute",
        path=f"/v2/functions/{FUNCTION_ID}",
        status=function_status,
        json={"function_uuid": FUNCTION_ID, "function_name": "reconstruct_view"},
    ).add()
    RegisteredResponse(
        service="compute",
        path=f"/v3/endpoints/{ENDPOINT}/submit",
        method="POST",
        status=submit_status,
        json=(
            {
                "request_id": "r",
                "task_group_id": "g",
                "endpoint_id": ENDPOINT,
                "tasks": {IDENTITY_FUNCTION_ID: [TASK_ID]},
            }
            if submit_status == 200
            else {"code": "FORBIDDEN", "error": "Endpoint not owned by you"}
        ),
    ).add()
    if answer is None:
        answer = {**LOCAL, "allowed_roots": ["/eagle/project"], "host": "x3005c0s1"}

    def task(request):
        """The answer, plus the real probe of the folder when the task was sent one."""
        (submit,) = [r for r in sent_requests() if r.path_url.endswith("/submit")]
        (payload,) = json.loads(submit.body)["tasks"][IDENTITY_FUNCTION_ID]
        _args, kwargs = unpack_task(payload)
        result = dict(answer)
        if "probe_dir" in kwargs:
            assert kwargs["probe_dir"].startswith(ROOT + "/.ptychoflow-check-")
            assert world is not None, "a probe needs the simulated collections"
            folder = world.probe_folder_on_endpoint()
            assert kwargs["probe_dir"] == f"{ROOT}/{folder.name}"
            result["probe"] = probe_shared_folder(str(folder), kwargs["token"])
        body = {
            "task_id": TASK_ID,
            "status": "success",
            "result": ComputeSerializer().serialize(result),
            "completion_t": "1700000000",
        }
        return 200, {}, json.dumps(body)

    responses.add_callback(
        responses.GET, f"https://compute.api.globus.org/v2/tasks/{TASK_ID}", callback=task
    )


def register_flow(
    flow_status=200,
    *,
    starters=None,
    roles=("flow_starter",),
    subscription=SUBSCRIPTION,
    validate=200,
):
    """``GET /flows/{id}`` as the caller sees it. The Flows API returns ``flow_starters``
    only to the flow's owner and administrators; a starter (the watcher) gets an empty
    list and finds ``flow_starter`` in ``user_roles`` (Flows OpenAPI, ``FlowResponse``;
    Globus Flows docs, "Flow permissions"). ``starters`` is the list an administrator
    would see; it is hidden unless ``roles`` holds an administrator role."""
    admin = bool({"flow_owner", "flow_administrator"} & set(roles))
    full_list = starters if starters is not None else [f"urn:globus:auth:identity:{WATCHER}"]
    RegisteredResponse(
        service="flows",
        path=f"/flows/{FLOW_ID}",
        status=flow_status,
        json=(
            {
                "id": FLOW_ID,
                "title": "ptychoflow",
                "flow_starters": full_list if admin else [],
                "user_role": roles[0] if roles else "flow_viewer",
                "user_roles": list(roles),
                "subscription_id": subscription,
            }
            if flow_status == 200
            else {"error": {"code": "NOT_FOUND", "detail": "no such flow"}}
        ),
    ).add()
    RegisteredResponse(
        service="flows",
        path=f"/flows/{FLOW_ID}/validate_run",
        method="POST",
        status=validate,
        json=(
            {"message": "the run is valid"}
            if validate == 200
            else {"error": {"code": "FORBIDDEN", "detail": "not a flow starter"}}
        ),
    ).add()


def register_healthy(world, **overrides):
    world.register()
    collections = overrides.pop("collections", True)
    if collections:
        register_collection(ACQUISITION)
        register_delete()
        register_collection(COMPUTE)
    register_endpoint(overrides.pop("endpoint_status", "online"))
    register_task(overrides.pop("answer", None), world=world)
    register_flow(**overrides)


def by_name(lines):
    return {line.name: line for line in lines}


def failed(lines):
    return [line for line in lines if not line.ok]


# -- every line ok ---------------------------------------------------------------------------


def test_a_healthy_deployment_passes_every_line_and_sends_the_expected_requests(
    config, world, mocked_responses
):
    register_healthy(world)
    lines = make_checker(config).run()
    assert failed(lines) == [], [line.format() for line in lines]
    assert [line.name for line in lines] == [
        "acquisition collection",
        "compute collection",
        "compute endpoint online",
        "functions runnable by this identity",
        "Transfer and the workers share the compute folder",
        "same code on the endpoint",
        "PTYCHOFLOW_ALLOWED_ROOTS covers the compute root",
        "flow exists",
        "this identity may start the flow",
        "subscription",
    ]
    sent = sent_requests()
    mkdirs = [r for r in sent if r.path_url.endswith("/mkdir")]
    assert [json.loads(r.body)["path"].rsplit("/", 1)[0] for r in mkdirs] == [
        "/beamline",
        "/ptycho",
        "/ptycho",  # the round trip's folder, made by Transfer as a run's input/<id> is
    ]
    deletes = [json.loads(r.body) for r in sent if r.path_url == "/v0.10/delete"]
    made = [json.loads(r.body)["path"] for r in mkdirs]
    assert [d["DATA"][0]["path"] for d in deletes] == made, "the test folders are removed"
    assert all(d["endpoint"] in (ACQUISITION, COMPUTE) for d in deletes)
    (submit,) = [r for r in sent if r.path_url.endswith("/submit")]
    assert list(json.loads(submit.body)["tasks"]) == [IDENTITY_FUNCTION_ID]
    # The round trip: a file in by Transfer, read and answered by the workers, back out.
    transfers = [json.loads(r.body) for r in sent if r.path_url == "/v0.10/transfer"]
    assert [(t["source_endpoint"], t["destination_endpoint"]) for t in transfers] == [
        (ACQUISITION, COMPUTE),
        (COMPUTE, ACQUISITION),
    ]
    assert transfers[0]["DATA"][0]["destination_path"].startswith("/ptycho/.ptychoflow-check-")
    assert deletes[-1]["endpoint"] == COMPUTE  # the compute-side test folder is removed
    assert deletes[-1]["DATA"][0]["path"].startswith("/ptycho/.ptychoflow-check-")
    assert list(config.acquisition_root.iterdir()) == []  # and the local one
    (validate,) = [r for r in sent if r.path_url.endswith("/validate_run")]
    body = json.loads(validate.body)["body"]
    assert body["compute_function"]["endpoint_id"] == ENDPOINT
    assert body["compute_function"]["function_id"] == FUNCTION_ID


# -- one test per failure line ------------------------------------------------------------------


def test_shared_folder_line_fails_when_transfer_cannot_read_what_the_workers_wrote(
    config, mocked_responses
):
    """Two accounts, one folder: the workers run as the endpoint's account with umask
    077 (ALCF Polaris default), and Transfer reads the compute collection as the guest
    collection's owner (Globus Connect Server v5 docs, guest collections: access is
    as the owner's local account). A result the workers wrote is then unreadable to
    TransferOut; check says so and how to fix it."""
    world = World(config, collection_uid=os.getuid() + 1)
    register_healthy(world)
    previous = os.umask(0o077)
    try:
        lines = by_name(make_checker(config).run())
    finally:
        os.umask(previous)
    line = lines["Transfer and the workers share the compute folder"]
    assert not line.ok
    assert "could not copy back" in line.detail
    assert "umask 077" in line.detail and "0600" in line.detail
    assert "guest collection" in line.detail
    assert lines["functions runnable by this identity"].ok


def test_shared_folder_line_fails_when_the_workers_cannot_read_the_input(
    config, world, mocked_responses
):
    """The workers cannot see what Transfer wrote (another folder, or no permission):
    the line names the folder and the accounts."""
    original = world.transfer

    def transfer_then_hide(request):
        answer = original(request)
        for path in world.compute.glob(".ptychoflow-check-*/in.txt"):
            path.write_text("someone else's file\n")
        return answer

    world.transfer = transfer_then_hide
    register_healthy(world)
    lines = by_name(make_checker(config).run())
    line = lines["Transfer and the workers share the compute folder"]
    assert not line.ok
    assert "could not read the file Transfer copied" in line.detail
    assert "does not hold the token" in line.detail


def test_tokens_line_fails_when_the_client_credentials_are_refused(config, mocked_responses):
    app = auth.make_app(
        config, environ={"PTYCHOFLOW_CLIENT_ID": WATCHER, "PTYCHOFLOW_CLIENT_SECRET": "wrong"}
    )
    RegisteredResponse(
        service="auth",
        path="/v2/oauth2/token",
        method="POST",
        status=401,
        json={"error": "invalid_client"},
    ).add()
    checker = make_checker(config, app=app)
    line = checker.check_tokens()
    assert not line.ok
    assert "ptychoflow login" in line.detail
    assert "401" in line.detail
    assert "grant_type=client_credentials" in sent_requests()[0].body


def test_collection_line_names_the_missing_data_access_consent(config, mocked_responses):
    register_collection(ACQUISITION)
    register_delete()
    RegisteredResponse(
        service="transfer",
        path=f"/v0.10/operation/endpoint/{COMPUTE}/mkdir",
        method="POST",
        status=403,
        json={
            "code": "ConsentRequired",
            "message": "Missing required data_access consent",
            "required_scopes": [
                f"https://auth.globus.org/scopes/{COMPUTE}/data_access",
            ],
        },
    ).add()
    lines = by_name(make_checker(config).run())
    assert lines["acquisition collection"].ok
    line = lines["compute collection"]
    assert not line.ok
    assert "data_access_collections" in line.detail
    assert "ptychoflow login" in line.detail
    assert "guest collection" in line.detail


def test_collection_line_fails_when_the_test_folder_cannot_be_deleted(config, mocked_responses):
    register_collection(ACQUISITION)
    register_delete(status="FAILED")
    register_collection(COMPUTE)
    register_endpoint()
    register_task()
    register_flow()
    lines = by_name(make_checker(config).run())
    assert not lines["acquisition collection"].ok
    assert "delete task del-1 is FAILED" in lines["acquisition collection"].detail


def test_endpoint_line_fails_when_offline_and_says_how_to_start_it(config, world, mocked_responses):
    register_healthy(world, endpoint_status="offline")
    (line,) = failed(make_checker(config).run())
    assert line.name == "compute endpoint online"
    assert "is offline" in line.detail
    assert "GLOBUS_COMPUTE_CLIENT_ID" in line.detail


def test_function_line_fails_when_the_endpoint_refuses_this_identity(config, mocked_responses):
    register_task(submit_status=403)
    checker = make_checker(config)
    line, answer = checker.check_identity_task()
    assert not line.ok and answer is None
    assert "403" in line.detail
    assert "runs only its owner's tasks" in line.detail
    # The code and roots lines cannot pass without the task.
    assert not checker.check_code(answer).ok
    assert not checker.check_allowed_roots(answer).ok


def test_code_line_fails_when_the_endpoint_runs_other_code(config, world, mocked_responses):
    answer = {
        "ptychoflow_version": "0.0.9",
        "code_hash": "sha256:old",
        "allowed_roots": [ROOT],
        "host": "x1",
    }
    register_healthy(world, collections=False, answer=answer)
    checker = make_checker(config)
    task_line, got = checker.check_identity_task()
    assert task_line.ok
    line = checker.check_code(got)
    assert not line.ok
    assert "0.0.9" in line.detail and "sha256:old" in line.detail
    assert "restart the endpoint" in line.detail


def test_allowed_roots_line_fails_when_the_compute_root_is_outside(config, world, mocked_responses):
    answer = {**LOCAL, "allowed_roots": ["/eagle/other"], "host": "x1"}
    register_healthy(world, collections=False, answer=answer)
    checker = make_checker(config)
    _, got = checker.check_identity_task()
    line = checker.check_allowed_roots(got)
    assert not line.ok
    assert "/eagle/other" in line.detail and ROOT in line.detail


def test_flow_line_fails_when_the_flow_is_gone(config, mocked_responses):
    register_flow(flow_status=404)
    checker = make_checker(config)
    line, flow = checker.check_flow_exists()
    assert not line.ok and flow is None
    assert "ptychoflow deploy" in line.detail
    assert "30 days" in line.detail


def test_start_line_passes_for_the_watcher_which_sees_no_starter_list(config, mocked_responses):
    """The watcher is a flow starter, not an administrator: Flows shows it an empty
    ``flow_starters`` and ``user_roles: ["flow_starter"]`` (Flows OpenAPI,
    ``FlowResponse.flow_starters`` is visible to administrators only). check must pass
    on that, and ask ``validate_run``."""
    register_flow(roles=("flow_starter",))
    checker = make_checker(config)
    _, flow = checker.check_flow_exists()
    assert flow is not None and flow["flow_starters"] == []
    line = checker.check_may_start(flow)
    assert line.ok, line.detail
    assert sent_requests()[-1].path_url.endswith("/validate_run")


def test_start_line_fails_when_an_administrator_sees_the_watcher_missing(config, mocked_responses):
    """An administrator (the deployer) is shown the full ``flow_starters`` list (Flows
    OpenAPI, ``FlowResponse``), so a watcher missing from it is reported."""
    register_flow(starters=[], roles=("flow_administrator",))
    checker = make_checker(config)
    _, flow = checker.check_flow_exists()
    line = checker.check_may_start(flow)
    assert not line.ok
    assert f"urn:globus:auth:identity:{WATCHER}" in line.detail


def test_start_line_fails_for_a_run_manager_without_asking_validate_run(config, mocked_responses):
    """Run managers cannot start runs (Globus Flows docs, "Flow permissions")."""
    register_flow(roles=("run_manager", "flow_viewer"))
    checker = make_checker(config)
    _, flow = checker.check_flow_exists()
    line = checker.check_may_start(flow)
    assert not line.ok
    assert "run_manager" in line.detail
    assert not any(r.path_url.endswith("/validate_run") for r in sent_requests())


def test_start_line_fails_when_flows_refuses_this_identity(config, mocked_responses):
    register_flow(validate=403)
    checker = make_checker(config)
    _, flow = checker.check_flow_exists()
    line = checker.check_may_start(flow)
    assert not line.ok
    assert "flow_starters" in line.detail
    assert "run managers cannot start runs" in line.detail


@pytest.mark.parametrize(("configured", "actual"), [("", SUBSCRIPTION), (SUBSCRIPTION, None)])
def test_subscription_line_fails_without_one(config, configured, actual, mocked_responses):
    config.globus.subscription_id = configured
    register_flow(subscription=actual)
    checker = make_checker(config)
    _, flow = checker.check_flow_exists()
    line = checker.check_subscription(flow)
    assert not line.ok
    assert "ptychoflow deploy" in line.detail


def test_check_command_exits_non_zero_and_prints_each_line(config, world, mocked_responses, capsys):
    """The CLI prints the checklist and exits 1 on any failure (endpoint offline here)."""
    import flows.globus.setup as setup
    from flows.cli import main

    register_healthy(world, endpoint_status="offline")
    original = setup.check_from_config
    setup.check_from_config = lambda cfg, task_timeout_s: make_checker(config).run()
    try:
        code = main(["check"])
    finally:
        setup.check_from_config = original
    out = capsys.readouterr().out
    assert code == 1
    assert "FAIL compute endpoint online" in out
    assert "ok   flow exists" in out
    assert "9/10 ok" in out


def test_deploy_reports_when_the_endpoint_runs_other_code(config, mocked_responses):
    from flows.globus.check import endpoint_code_report

    register_task({**LOCAL, "code_hash": "sha256:old", "allowed_roots": [ROOT]})
    compute = auth.compute_client(authorizer=globus_sdk.NullAuthorizer(), do_version_check=False)
    (message,) = endpoint_code_report(compute, config, STATE, timeout_s=5, local=LOCAL)
    assert message.startswith("warning: the endpoint runs ptychoflow 0.1.0 (code sha256:old)")
    assert "install the same ptychoflow" in message


def test_deploy_says_when_the_endpoint_did_not_answer_in_time(config, mocked_responses):
    from flows.globus.check import run_identity_task

    register_task()
    responses.replace(
        responses.GET,
        f"https://compute.api.globus.org/v2/tasks/{TASK_ID}",
        json={"task_id": TASK_ID, "status": "waiting-for-launch"},
    )
    compute = auth.compute_client(authorizer=globus_sdk.NullAuthorizer(), do_version_check=False)
    clock = iter(range(0, 100, 10))
    result = run_identity_task(
        compute,
        ENDPOINT,
        IDENTITY_FUNCTION_ID,
        timeout_s=25,
        sleep=lambda s: None,
        clock=lambda: next(clock),
    )
    assert result.answer is None
    assert "still waiting-for-launch after 25 s" in (result.error or "")
    # The interface is among the causes named (Globus Compute's Polaris example uses hsn0).
    assert "interface" in (result.error or "") and "hsn0" in (result.error or "")
    assert "qstat" in (result.error or "")
    polls = [r for r in sent_requests() if r.path_url == f"/v2/tasks/{TASK_ID}"]
    assert len(polls) == 3


def test_an_incomplete_config_gives_failed_lines_not_a_traceback(config, world, mocked_responses):
    config.globus.acquisition_collection = ""
    register_healthy(world, collections=False)
    register_collection(COMPUTE)
    register_delete()
    lines = by_name(make_checker(config).run())
    assert not lines["acquisition collection"].ok
    assert "not set" in lines["acquisition collection"].detail
    assert lines["compute collection"].ok
    assert len(lines) == 10
    shared = lines["Transfer and the workers share the compute folder"]
    assert not shared.ok and "acquisition_collection not set" in shared.detail
