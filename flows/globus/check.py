"""``ptychoflow check``: prove a Globus deployment works before beamtime.

Against the live services, with the identity this process is configured with
(the watcher's client when its credentials are in the environment), each line
of a checklist is ``ok`` or the failure with its fix:

- tokens: a valid token for every service the project uses;
- the acquisition and compute collections: reachable and writable (a test
  folder is made and deleted through Transfer; a missing ``data_access``
  consent on a mapped collection shows here);
- the Compute endpoint is online;
- the compute functions are runnable by this identity: a tiny task
  (:func:`functions.code_identity.endpoint_identity`) comes back;
- the code on the endpoint is this machine's (version and code hash);
- ``PTYCHOFLOW_ALLOWED_ROOTS`` on the endpoint covers the compute root;
- the flow exists, and this identity may start it (Flows ``validate_run``);
- the flow has the configured subscription.

Every service error becomes a failed line; nothing here raises for a broken
deployment.
"""

from __future__ import annotations

import dataclasses
import logging
import posixpath
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import globus_sdk
from globus_sdk.token_storage import TokenValidationError

from flows.backend import ViewRequest
from flows.config import Config
from flows.globus.errors import FLOW_GONE_HINT, api_error_text, network_reason
from flows.globus.state import DeploymentState
from functions.code_identity import code_identity, roots_cover
from recon.errors import PtychoflowError

LOGIN_FIX = "run `ptychoflow login` with the same identity (environment) and check again"
ENDPOINT_FIX = (
    "on the cluster, start the endpoint with the watcher's client credentials "
    "(GLOBUS_COMPUTE_CLIENT_ID/SECRET set) so that client owns it: "
    "`globus-compute-endpoint start <name>`"
)
DEPLOY_FIX = "run `ptychoflow deploy`"
#: Why a task stays queued on a Polaris endpoint, the likeliest first.
QUEUED_TASK_CAUSES = (
    "likely causes: (1) the batch job is still waiting in the PBS queue (`qstat -u $USER` "
    "on the login node; `debug` allows one job, `prod` refuses jobs of fewer than 10 "
    "nodes); (2) the job runs but its workers cannot reach the interchange on the login "
    "node: the engine's `interface` (default hsn0; the compute nodes no longer reach the "
    "login nodes over bond0) must be one the compute nodes reach (`ip -brief addr`; "
    "the job's output in ~/.globus_compute/<endpoint>/submit_scripts/); (3) the job "
    "failed at worker_init (same output file)"
)

log = logging.getLogger(__name__)

_SERVICE_ERRORS = (globus_sdk.GlobusAPIError, globus_sdk.NetworkError, TokenValidationError)


#: The checklist's lines, in order (``tokens and consents`` only with a Globus app).
CHECK_NAMES = (
    "tokens and consents",
    "acquisition collection",
    "compute collection",
    "compute endpoint online",
    "functions runnable by this identity",
    "same code on the endpoint",
    "PTYCHOFLOW_ALLOWED_ROOTS covers the compute root",
    "flow exists",
    "this identity may start the flow",
    "subscription",
)


def unreachable_lines(err: BaseException) -> list[CheckLine]:
    """One FAIL line per check when Globus cannot be reached at all (DNS down)."""
    reason = f"cannot reach Globus: {network_reason(err)}; check the network and DNS"
    return [CheckLine(CHECK_NAMES[0], False, reason)] + [
        CheckLine(name, False, "not checked: Globus unreachable") for name in CHECK_NAMES[1:]
    ]


@dataclasses.dataclass(frozen=True)
class CheckLine:
    """One line of the checklist: ``ok`` with a note, or the failure and its fix."""

    name: str
    ok: bool
    detail: str = ""

    def format(self) -> str:
        mark = "ok  " if self.ok else "FAIL"
        return f"{mark} {self.name}" + (f": {self.detail}" if self.detail else "")


def _error_text(err: BaseException) -> str:
    if isinstance(err, globus_sdk.GlobusAPIError):
        return api_error_text(err)
    if isinstance(err, globus_sdk.NetworkError):
        return f"cannot reach Globus: {network_reason(err)}"
    return f"{type(err).__name__}: {err}"


def _is_consent_error(err: BaseException) -> bool:
    if not isinstance(err, globus_sdk.GlobusAPIError):
        return False
    code = str(err.code or "").replace("_", "").upper()
    return code == "CONSENTREQUIRED" or "data_access" in (err.text or "")


@dataclasses.dataclass
class IdentityTaskResult:
    """What the tiny task on the endpoint answered, or why it did not."""

    answer: dict[str, Any] | None
    error: str | None = None
    seconds: float = 0.0


def run_identity_task(
    compute_client: Any,
    endpoint_id: str,
    function_id: str,
    *,
    timeout_s: float,
    poll_interval_s: float = 2.0,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
    kwargs: dict[str, str] | None = None,
) -> IdentityTaskResult:
    """Run :func:`~functions.code_identity.endpoint_identity` on the endpoint and wait for it.

    ``compute_client`` is a ``globus_compute_sdk.Client``. Never raises for service
    errors: they come back in ``error``.
    """
    started = clock()
    try:
        task_id = compute_client.run(
            endpoint_id=endpoint_id, function_id=function_id, **(kwargs or {})
        )
    except _SERVICE_ERRORS as err:
        hint = ""
        if isinstance(err, globus_sdk.GlobusAPIError) and err.http_status == 403:
            hint = "; a non-privileged endpoint runs only its owner's tasks: " + ENDPOINT_FIX
        return IdentityTaskResult(None, f"submitting the task: {_error_text(err)}{hint}")
    while True:
        try:
            task = compute_client.get_task(task_id)
        except _SERVICE_ERRORS as err:
            return IdentityTaskResult(None, f"reading task {task_id}: {_error_text(err)}")
        except Exception as err:  # TaskExecutionFailed: the function raised on the endpoint
            return IdentityTaskResult(None, f"task {task_id} failed on the endpoint: {err}")
        elapsed = clock() - started
        if not task.get("pending", True):
            answer = task.get("result")
            if not isinstance(answer, dict):
                reason = task.get("reason") or f"unexpected result {answer!r}"
                return IdentityTaskResult(None, f"task {task_id}: {reason}", elapsed)
            return IdentityTaskResult(answer, None, elapsed)
        if elapsed >= timeout_s:
            return IdentityTaskResult(
                None,
                f"task {task_id} still {task.get('status', 'pending')} after {timeout_s:g} s; "
                f"{QUEUED_TASK_CAUSES}",
                elapsed,
            )
        sleep(poll_interval_s)


def code_mismatch(answer: dict[str, Any], local: dict[str, str]) -> str | None:
    """A sentence naming what differs between the endpoint's code and this machine's."""
    remote_version = answer.get("ptychoflow_version")
    remote_hash = answer.get("code_hash")
    if remote_version == local["ptychoflow_version"] and remote_hash == local["code_hash"]:
        return None
    return (
        f"the endpoint runs ptychoflow {remote_version} (code {remote_hash}), this machine "
        f"has {local['ptychoflow_version']} (code {local['code_hash']}); install the same "
        "ptychoflow in the endpoint's environment and restart the endpoint (functions are "
        "shipped by reference: the endpoint runs what is installed there)"
    )


def endpoint_code_report(
    compute_client: Any,
    config: Config,
    state: DeploymentState,
    *,
    timeout_s: float,
    local: dict[str, str] | None = None,
) -> list[str]:
    """Messages for ``deploy``: does the endpoint run this machine's code?"""
    if not state.identity_function_id or not config.globus.compute_endpoint:
        return []
    result = run_identity_task(
        compute_client,
        config.globus.compute_endpoint,
        state.identity_function_id,
        timeout_s=timeout_s,
    )
    if result.answer is None:
        return [
            f"could not compare the code on the endpoint ({result.error}); "
            "`ptychoflow check` waits longer"
        ]
    mismatch = code_mismatch(result.answer, local or code_identity())
    if mismatch:
        return [f"warning: {mismatch}"]
    return [
        f"the endpoint runs this machine's code (ptychoflow {result.answer['ptychoflow_version']}, "
        f"{result.answer['code_hash']})"
    ]


#: Flow roles that may start runs (Flows permissions: owners, administrators and
#: starters may run a flow; run managers and viewers may not).
STARTING_ROLES = frozenset({"flow_owner", "flow_administrator", "flow_starter"})
#: Flow roles that are shown the flow's full ``flow_starters`` list.
ADMIN_ROLES = frozenset({"flow_owner", "flow_administrator"})


def watcher_starter_problem(flow: dict[str, Any], watcher_client_id: str) -> str | None:
    """Why the watcher's client cannot start ``flow`` (a Flows ``GET /flows/{id}``
    document), or None when nothing in the document says so.

    The Flows API returns ``flow_starters`` only to the flow's owner and
    administrators; everyone else, the watcher's client included, gets an empty list
    and finds its own roles in ``user_roles`` (Flows OpenAPI, ``FlowResponse``:
    ``flow_starters``, ``user_roles``; Globus Flows docs, "Flow permissions"). So the
    list is read only when this identity is an administrator; otherwise the caller's
    own roles are read, and ``validate_run`` has the last word.
    """
    roles = {str(role) for role in flow.get("user_roles") or []}
    if not watcher_client_id:
        return None
    watcher_urn = f"urn:globus:auth:identity:{watcher_client_id}"
    if roles & ADMIN_ROLES:
        if watcher_urn not in (flow.get("flow_starters") or []):
            return (
                f"the watcher's client {watcher_urn} is not among the flow's starters; "
                f"fix: {DEPLOY_FIX} (it sends [globus] watcher_client_id as a starter)"
            )
        return None
    if roles and not roles & STARTING_ROLES:
        return (
            f"this identity's roles on the flow are {', '.join(sorted(roles))}, none of "
            f"which may start runs (run managers cannot); fix: add it to [globus] "
            f"flow_starters, or run check as the watcher, and {DEPLOY_FIX}"
        )
    return None


SHARED_FOLDER_LINE = "Transfer and the workers share the compute folder"
TWO_ACCOUNTS_FIX = (
    "Transfer writes on the compute collection as the account behind it (a guest "
    "collection's owner, or the mapped account); the endpoint's workers run as the "
    "account that started the endpoint, with umask 077. Start the endpoint as the account "
    "that owns the guest collection (simplest), or put both accounts in one group, make "
    "the compute root group-owned and setgid (`chgrp -R G root; chmod -R g+rwXs root`) and "
    "add `umask 007` to worker_init"
)


class SharedFolderProbe:
    """The round trip that proves Transfer and the endpoint's workers share the compute
    root with usable permissions (two accounts, one folder):

    1. a file with a random token is written under the local acquisition root;
    2. Transfer makes ``<compute_base>/.ptychoflow-check-<hex>`` on the compute
       collection (as a run's ``input/<id>`` is made) and copies the file into it;
    3. the identity task reads it there and writes ``out.txt``
       (:func:`functions.code_identity.probe_shared_folder`), as a result is written;
    4. Transfer copies ``out.txt`` back (as TransferOut does) and it is read locally;
    5. both test folders are removed (a Transfer delete task on the compute side).
    """

    def __init__(self, checker: DeploymentChecker) -> None:
        self.checker = checker
        self.token = uuid.uuid4().hex
        self.name = f".ptychoflow-check-{self.token[:12]}"
        settings = checker.config.globus
        self.local_dir = checker.config.acquisition_root / self.name
        self.acquisition_dir = posixpath.join(settings.acquisition_base or "/", self.name)
        self.compute_dir = posixpath.join(settings.compute_base or "/", self.name)
        self.endpoint_dir = (
            posixpath.join(settings.compute_root_on_endpoint, self.name)
            if settings.compute_root_on_endpoint
            else ""
        )
        self.sent = False
        self.compute_dir_made = False

    def task_kwargs(self) -> dict[str, str] | None:
        """What the identity task is asked to probe (None when nothing was sent)."""
        if not self.sent or not self.endpoint_dir:
            return None
        return {"probe_dir": self.endpoint_dir, "token": self.token}

    def _transfer(self, source: str, destination: str, items: list[tuple[str, str]]) -> str:
        data = globus_sdk.TransferData(source, destination, label="ptychoflow check")
        for source_path, destination_path in items:
            data.add_item(source_path, destination_path)
        task_id = str(self.checker.transfer_client.submit_transfer(data)["task_id"])
        return f"task {task_id} {self.checker._wait_transfer_task(task_id)}"

    def send_in(self) -> CheckLine:
        from functions.code_identity import PROBE_INPUT_NAME

        settings = self.checker.config.globus
        missing = [
            key
            for key in ("acquisition_collection", "compute_collection", "compute_root_on_endpoint")
            if not getattr(settings, key)
        ]
        if missing:
            return CheckLine(
                SHARED_FOLDER_LINE, False, f"not checked: [globus] {', '.join(missing)} not set"
            )
        try:
            self.local_dir.mkdir(parents=True)
            (self.local_dir / PROBE_INPUT_NAME).write_text(self.token + "\n")
        except OSError as err:
            return CheckLine(
                SHARED_FOLDER_LINE,
                False,
                f"cannot write a test file under the acquisition root "
                f"{self.checker.config.acquisition_root}: {err}",
            )
        try:
            self.checker.transfer_client.operation_mkdir(
                settings.compute_collection, self.compute_dir
            )
            self.compute_dir_made = True
            done = self._transfer(
                settings.acquisition_collection,
                settings.compute_collection,
                [
                    (
                        posixpath.join(self.acquisition_dir, PROBE_INPUT_NAME),
                        posixpath.join(self.compute_dir, PROBE_INPUT_NAME),
                    )
                ],
            )
        except _SERVICE_ERRORS as err:
            return CheckLine(
                SHARED_FOLDER_LINE, False, f"copying a test file in: {_error_text(err)}"
            )
        if not done.endswith("SUCCEEDED"):
            return CheckLine(
                SHARED_FOLDER_LINE,
                False,
                f"copying a test file to {self.compute_dir} on the compute collection: {done}",
            )
        self.sent = True
        return CheckLine(SHARED_FOLDER_LINE, True, "sent")

    def bring_back(self, answer: dict[str, Any] | None) -> CheckLine:
        from functions.code_identity import PROBE_OUTPUT_NAME

        name = SHARED_FOLDER_LINE
        if answer is None:
            return CheckLine(name, False, "not checked: the test task did not run (see above)")
        probe = answer.get("probe")
        if not isinstance(probe, dict):
            return CheckLine(
                name,
                False,
                "the endpoint's code does not probe folders (an older ptychoflow); install "
                "this version in the endpoint's environment and restart the endpoint",
            )
        who = (
            f"workers run as {probe.get('user')} (uid {probe.get('uid')}, "
            f"umask {probe.get('umask')})"
        )
        owner = (
            f"the folder Transfer made ({self.endpoint_dir}) belongs to uid "
            f"{probe.get('folder_uid', '?')}, mode {probe.get('folder_mode', '?')}"
        )
        if probe.get("error") or not probe.get("wrote_output"):
            seen = (
                "read the test file but could not write beside it"
                if probe.get("read_input")
                else "could not read the file Transfer copied"
            )
            return CheckLine(
                name,
                False,
                f"the workers {seen} ({probe.get('error')}); {who}; {owner}; fix: "
                f"{TWO_ACCOUNTS_FIX}",
            )
        settings = self.checker.config.globus
        try:
            done = self._transfer(
                settings.compute_collection,
                settings.acquisition_collection,
                [
                    (
                        posixpath.join(self.compute_dir, PROBE_OUTPUT_NAME),
                        posixpath.join(self.acquisition_dir, PROBE_OUTPUT_NAME),
                    )
                ],
            )
        except _SERVICE_ERRORS as err:
            return CheckLine(name, False, f"copying the workers' file back: {_error_text(err)}")
        if not done.endswith("SUCCEEDED"):
            return CheckLine(
                name,
                False,
                f"Transfer could not copy back the file the workers wrote ({done}; its mode "
                f"is {probe.get('output_mode')}); {who}; {owner}; fix: {TWO_ACCOUNTS_FIX}",
            )
        try:
            back = (self.local_dir / PROBE_OUTPUT_NAME).read_text().strip()
        except OSError as err:
            back = f"unreadable ({err})"
        if back != self.token:
            return CheckLine(
                name,
                False,
                f"the file copied back to {self.local_dir} does not hold the token: {back!r}",
            )
        return CheckLine(
            name,
            True,
            f"a file went in by Transfer, the workers read it and wrote one, and it came "
            f"back; {who}",
        )

    def clean_up(self) -> None:
        """Remove both test folders; a failure is logged, never raised."""
        import shutil

        shutil.rmtree(self.local_dir, ignore_errors=True)
        if not self.compute_dir_made:
            return
        delete = globus_sdk.DeleteData(
            endpoint=self.checker.config.globus.compute_collection,
            label="ptychoflow check",
            recursive=True,
        )
        delete.add_item(self.compute_dir)
        try:
            self.checker.transfer_client.submit_delete(delete)
        except _SERVICE_ERRORS as err:
            log.warning("could not remove %s on the compute collection: %s", self.compute_dir, err)


class DeploymentChecker:
    """Runs the checklist with the given clients (see the module docstring).

    ``app``: the ``GlobusApp`` the clients were built on (None in tests with
    other authorizers: the token line is then left out). ``compute_client`` is a
    ``globus_compute_sdk.Client``.
    """

    def __init__(
        self,
        config: Config,
        state: DeploymentState,
        *,
        flows_client: globus_sdk.FlowsClient,
        run_client: globus_sdk.SpecificFlowClient | None,
        transfer_client: globus_sdk.TransferClient,
        compute_client: Any,
        app: globus_sdk.GlobusApp | None = None,
        identity_urn: str | None = None,
        task_timeout_s: float = 600.0,
        poll_interval_s: float = 2.0,
        sleep: Callable[[float], None] = time.sleep,
        local_identity: dict[str, str] | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.flows_client = flows_client
        self.run_client = run_client
        self.transfer_client = transfer_client
        self.compute_client = compute_client
        self.app = app
        self.identity_urn = identity_urn
        self.task_timeout_s = task_timeout_s
        self.poll_interval_s = poll_interval_s
        self._sleep = sleep
        self.local_identity = local_identity or code_identity()

    def run(self) -> list[CheckLine]:
        return list(self.lines())

    def lines(self) -> Iterator[CheckLine]:
        settings = self.config.globus
        if self.app is not None:
            yield self._guarded("tokens and consents", self.check_tokens)
        yield self._guarded(
            "acquisition collection",
            lambda: self.check_collection(
                "acquisition collection",
                settings.acquisition_collection,
                settings.acquisition_base,
            ),
        )
        yield self._guarded(
            "compute collection",
            lambda: self.check_collection(
                "compute collection", settings.compute_collection, settings.compute_base
            ),
        )
        yield self._guarded("compute endpoint online", self.check_endpoint_online)
        answer: dict[str, Any] | None = None
        probe = SharedFolderProbe(self)
        inbound = self._guarded(SHARED_FOLDER_LINE, probe.send_in)
        try:
            task_line, answer = self.check_identity_task(probe.task_kwargs())
        except Exception as err:  # a checklist line, never a traceback
            task_line = CheckLine("functions runnable by this identity", False, _error_text(err))
        yield task_line
        yield (
            inbound
            if not inbound.ok
            else self._guarded(SHARED_FOLDER_LINE, lambda: probe.bring_back(answer))
        )
        probe.clean_up()
        yield self._guarded("same code on the endpoint", lambda: self.check_code(answer))
        yield self._guarded(
            "PTYCHOFLOW_ALLOWED_ROOTS covers the compute root",
            lambda: self.check_allowed_roots(answer),
        )
        flow: dict[str, Any] | None = None
        try:
            flow_line, flow = self.check_flow_exists()
        except Exception as err:
            flow_line = CheckLine("flow exists", False, _error_text(err))
        yield flow_line
        yield self._guarded("this identity may start the flow", lambda: self.check_may_start(flow))
        yield self._guarded("subscription", lambda: self.check_subscription(flow))

    @staticmethod
    def _guarded(name: str, check: Callable[[], CheckLine]) -> CheckLine:
        """``check()``, or a failed line naming the unexpected error (no traceback)."""
        try:
            return check()
        except Exception as err:
            return CheckLine(name, False, _error_text(err))

    # -- the lines ---------------------------------------------------------------------------

    def check_tokens(self) -> CheckLine:
        name = "tokens and consents"
        assert self.app is not None
        servers = sorted(self.app.scope_requirements)
        for server in servers:
            try:
                authorizer = self.app.get_authorizer(server)
                header = authorizer.get_authorization_header()
            except _SERVICE_ERRORS as err:
                return CheckLine(name, False, f"{server}: {_error_text(err)}; fix: {LOGIN_FIX}")
            if not header:
                return CheckLine(name, False, f"{server}: no token; fix: {LOGIN_FIX}")
        collections = self.config.globus.data_access_collections
        note = f"tokens for {', '.join(servers)}"
        if collections:
            note += f"; data_access requested for {', '.join(collections)} (proven below)"
        return CheckLine(name, True, note)

    def check_collection(self, name: str, collection: str, base: str) -> CheckLine:
        if not collection:
            return CheckLine(name, False, "not set in [globus]; fix: set its collection id")
        test_dir = posixpath.join(base or "/", f".ptychoflow-check-{uuid.uuid4().hex[:12]}")
        doing = f"making {test_dir} on {collection}"
        try:
            self.transfer_client.operation_mkdir(collection, test_dir)
            doing = f"deleting {test_dir} on {collection}"
            delete = globus_sdk.DeleteData(
                endpoint=collection, label="ptychoflow check", recursive=True
            )
            delete.add_item(test_dir)
            task_id = str(self.transfer_client.submit_delete(delete)["task_id"])
            status = self._wait_transfer_task(task_id)
        except _SERVICE_ERRORS as err:
            if _is_consent_error(err):
                fix = (
                    f"add {collection} to [globus] data_access_collections (a mapped "
                    f"collection), then {LOGIN_FIX}; a client identity without an account "
                    "on the mapped collection needs a guest collection instead"
                )
            elif isinstance(err, globus_sdk.GlobusAPIError) and err.http_status in (403, 404):
                fix = (
                    f"check the collection id and that this identity may write under {base} "
                    "(guest collection permissions, or its identity mapping)"
                )
            else:
                fix = "check the collection is online and try again"
            return CheckLine(name, False, f"{doing}: {_error_text(err)}; fix: {fix}")
        if status != "SUCCEEDED":
            return CheckLine(
                name,
                False,
                f"made {test_dir} but its delete task {task_id} is {status}; fix: check "
                "delete permission on the collection, and remove the folder by hand",
            )
        return CheckLine(name, True, f"made and deleted {test_dir} on {collection}")

    def _wait_transfer_task(self, task_id: str, timeout_s: float = 300.0) -> str:
        deadline = time.monotonic() + timeout_s
        while True:
            status = str(self.transfer_client.get_task(task_id)["status"])
            if status in ("SUCCEEDED", "FAILED") or time.monotonic() >= deadline:
                return status
            self._sleep(min(self.poll_interval_s, 5.0))

    def check_endpoint_online(self) -> CheckLine:
        name = "compute endpoint online"
        endpoint = self.config.globus.compute_endpoint
        if not endpoint:
            return CheckLine(name, False, "[globus] compute_endpoint is not set")
        try:
            status = self.compute_client.get_endpoint_status(endpoint)
        except _SERVICE_ERRORS as err:
            return CheckLine(name, False, f"{endpoint}: {_error_text(err)}; fix: {ENDPOINT_FIX}")
        state = str(status.get("status", "unknown"))
        if state != "online":
            return CheckLine(name, False, f"{endpoint} is {state}; fix: {ENDPOINT_FIX}")
        return CheckLine(name, True, f"{endpoint} is online")

    def check_identity_task(
        self, task_kwargs: dict[str, str] | None = None
    ) -> tuple[CheckLine, dict[str, Any] | None]:
        name = "functions runnable by this identity"
        if not self.state.function_id or not self.state.identity_function_id:
            return CheckLine(name, False, f"no functions deployed; fix: {DEPLOY_FIX}"), None
        try:
            self.compute_client.get_function(self.state.function_id)
        except _SERVICE_ERRORS as err:
            return (
                CheckLine(
                    name,
                    False,
                    f"reconstruct function {self.state.function_id}: {_error_text(err)}; "
                    f"fix: {DEPLOY_FIX}",
                ),
                None,
            )
        result = run_identity_task(
            self.compute_client,
            self.config.globus.compute_endpoint,
            self.state.identity_function_id,
            timeout_s=self.task_timeout_s,
            poll_interval_s=self.poll_interval_s,
            sleep=self._sleep,
            kwargs=task_kwargs,
        )
        if result.answer is None and task_kwargs and "unexpected keyword" in str(result.error):
            # An older ptychoflow on the endpoint: ask again without the folder probe, so
            # the code line can say what runs there.
            result = run_identity_task(
                self.compute_client,
                self.config.globus.compute_endpoint,
                self.state.identity_function_id,
                timeout_s=self.task_timeout_s,
                poll_interval_s=self.poll_interval_s,
                sleep=self._sleep,
            )
        if result.answer is None:
            return CheckLine(name, False, str(result.error)), None
        host = result.answer.get("host", "?")
        return CheckLine(name, True, f"a test task ran on {host}"), result.answer

    def check_code(self, answer: dict[str, Any] | None) -> CheckLine:
        name = "same code on the endpoint"
        if answer is None:
            return CheckLine(name, False, "not checked: the test task did not run (see above)")
        mismatch = code_mismatch(answer, self.local_identity)
        if mismatch:
            return CheckLine(name, False, mismatch)
        return CheckLine(
            name,
            True,
            f"ptychoflow {answer['ptychoflow_version']}, {answer['code_hash']}",
        )

    def check_allowed_roots(self, answer: dict[str, Any] | None) -> CheckLine:
        name = "PTYCHOFLOW_ALLOWED_ROOTS covers the compute root"
        root = self.config.globus.compute_root_on_endpoint
        if not root:
            return CheckLine(name, False, "[globus] compute_root_on_endpoint is not set")
        if answer is None:
            return CheckLine(name, False, "not checked: the test task did not run (see above)")
        roots = [str(r) for r in answer.get("allowed_roots") or []]
        if not roots_cover(roots, root):
            shown = ", ".join(roots) if roots else "unset"
            return CheckLine(
                name,
                False,
                f"the endpoint's PTYCHOFLOW_ALLOWED_ROOTS is {shown}, which does not cover "
                f"{root}; fix: set it in the endpoint's environment (worker_init) to include "
                f"{root} and restart the endpoint",
            )
        return CheckLine(name, True, f"{root} is under {', '.join(roots)}")

    def check_flow_exists(self) -> tuple[CheckLine, dict[str, Any] | None]:
        name = "flow exists"
        flow_id = self.state.flow_id
        if not flow_id:
            return CheckLine(name, False, f"no flow deployed; fix: {DEPLOY_FIX}"), None
        try:
            flow = dict(self.flows_client.get_flow(flow_id).data)
        except _SERVICE_ERRORS as err:
            if isinstance(err, globus_sdk.GlobusAPIError) and err.http_status == 404:
                return CheckLine(name, False, f"flow {flow_id}: {FLOW_GONE_HINT}"), None
            return CheckLine(name, False, f"flow {flow_id}: {_error_text(err)}"), None
        return CheckLine(name, True, f"flow {flow_id} ({flow.get('title', '')})"), flow

    def check_may_start(self, flow: dict[str, Any] | None) -> CheckLine:
        name = "this identity may start the flow"
        if flow is None or self.run_client is None:
            return CheckLine(name, False, "not checked: no flow (see above)")
        problem = watcher_starter_problem(flow, self.config.globus.watcher_client_id)
        if problem:
            return CheckLine(name, False, problem)
        try:
            body = self._sample_input()
        except PtychoflowError as err:
            return CheckLine(name, False, f"the config cannot make a flow input: {err}")
        try:
            self.run_client.validate_run(body, label="ptychoflow check", tags=["check"])
        except _SERVICE_ERRORS as err:
            who = self.identity_urn or "this identity"
            if isinstance(err, globus_sdk.GlobusAPIError) and err.http_status == 403:
                fix = (
                    f"add {who} to [globus] flow_starters (or set watcher_client_id) and "
                    f"{DEPLOY_FIX}; run managers cannot start runs"
                )
            elif _is_consent_error(err) or (
                isinstance(err, globus_sdk.GlobusAPIError) and err.http_status == 401
            ):
                fix = LOGIN_FIX
            else:
                fix = "see the message"
            return CheckLine(name, False, f"{_error_text(err)}; fix: {fix}")
        return CheckLine(name, True, f"{self.identity_urn or 'this identity'} may start runs")

    def _sample_input(self) -> dict[str, Any]:
        """The flow input of a made-up view, built from the config as runs are."""
        from flows.flow_input import build_flow_input

        settings = self.config.globus
        request = ViewRequest(scan_id=0, view_file="check.cxi", scan_folder="scan0", recon={})
        return build_flow_input(
            request,
            acquisition_collection=settings.acquisition_collection,
            acquisition_base=settings.acquisition_base,
            compute_collection=settings.compute_collection,
            compute_base=settings.compute_base,
            compute_endpoint=settings.compute_endpoint,
            function_id=self.state.function_id or "",
            compute_root_on_endpoint=settings.compute_root_on_endpoint,
        )

    def check_subscription(self, flow: dict[str, Any] | None) -> CheckLine:
        name = "subscription"
        wanted = self.config.globus.subscription_id
        if not wanted:
            return CheckLine(
                name,
                False,
                "no [globus] subscription_id: the flow expires 30 days after its last update; "
                f"fix: set it and {DEPLOY_FIX}",
            )
        if flow is None:
            return CheckLine(name, False, "not checked: no flow (see above)")
        actual = flow.get("subscription_id")
        if actual != wanted:
            return CheckLine(
                name,
                False,
                f"the flow has subscription {actual or 'none'}, the config says {wanted}; "
                f"fix: {DEPLOY_FIX}",
            )
        return CheckLine(name, True, f"flow under subscription {wanted}")
