"""Creating a VM from a plan, as a ``provision`` task the leader runs, resumes, or rolls back.

The coordinator asked records the task with its whole plan (`pvc.rpc.provisioning_plan`) before anything is
made; from then on the leader carries it out, in this order: each volume (blank or cloned), the config drive
(uploaded through the storage layer like any image), the VM's definition, the name of the OVA it was made
from in its record (``made_from``, which `ova remove` reads long after the task is pruned), the DHCP
reservations its network template asks for (by the MACs in its definition), and its start if asked. Before a
volume is made its name goes into the task's ``made`` list, so the task always knows what it may have left,
and the leader's every write checks it still leads. A leader that dies midway leaves a task the next leader
runs again from the top: every step sees what is already there (a volume recorded, the VM's UUID taken) and
goes on, and a volume begun but never recorded is cleared and made again. So a creation ends with the whole VM
or, when a step fails for good, with nothing: the task removes every volume it made and ends ``failed`` with
the reason, which the caller receives as the error it was.
"""
import io
import logging
import time
import uuid
from typing import Any, Callable

from kazoo.exceptions import NoNodeError

from pvc import bulk, cloud_init, errors, schema
from pvc.cache import OWN_VALUE
from pvc.errors import AlreadyExists, Busy, Conflict, NotLeader, PVCError, Unavailable
from pvc.rpc import network_use
from pvc.rpc.context import CoordinatorContext
from pvc.rpc.tasks import ACTIVE_STATES, list_tasks

log = logging.getLogger(__name__)

KIND = "provision"
MAX_ATTEMPTS = 120
"""Runs of a task that the cluster kept from finishing (no storage node, a busy pool) before it is given up
and rolled back."""
TRANSIENT = (Unavailable, Busy, NotLeader)
"""Failures that say nothing about the plan: the next leader tick tries again."""
WAIT_TIMEOUT_S = 300.0
UPLOAD_CONNECT_TIMEOUT_S = 30.0
STORAGE_ACTION_TIMEOUT_S = 570.0
SCRIPT_POLL_S = 0.5
MADE_FROM = "made_from"
"""The key of a VM's record naming what the provisioner made it from: ``{"ova": NAME}``."""


def record_task(context: CoordinatorContext, plan: dict[str, Any], profile: str) -> dict[str, Any]:
    """Record the creation; one VM name has one creation in progress at a time."""
    vm = plan["vm"]
    for task in active_tasks(context):
        if task.get("vm") == vm:
            raise Conflict(f"VM '{vm}' is being created already (task {task['id']})")
    task_id = f"{KIND}-{vm}-{uuid.uuid4().hex[:8]}"
    task = {"id": task_id, "kind": KIND, "node": None, "vm": vm, "profile": profile, "state": "pending",
            "created": time.time(), "attempts": 0, "made": [], "plan": plan, "rollback": None, "error": None,
            "error_class": None, "last_error": None, "start_error": None}
    context.store.transaction().create(schema.task(task_id), task).commit()
    return task


def active_tasks(context: CoordinatorContext) -> list[dict[str, Any]]:
    return [task for task in list_tasks(context) if task["kind"] == KIND and task["state"] in ACTIVE_STATES]


def task_view(task: dict[str, Any]) -> dict[str, Any]:
    """A creation as users see it: without the plan's XML and user data."""
    return {"id": task["id"], "vm": task["vm"], "profile": task.get("profile"), "state": task["state"],
            "volumes": task["made"], "error": task.get("error"), "start_error": task.get("start_error"),
            "reservation_error": task.get("reservation_error"), "last_error": task.get("last_error"),
            "script": {key: value for key, value in (task.get("script") or {}).items()
                       if key in ("state", "node", "runs", "exit_code", "timed_out", "output")} or None}


def wait_for(context: CoordinatorContext, task_id: str, timeout: float = WAIT_TIMEOUT_S) -> dict[str, Any]:
    """The task once finished; a failed one raises its error, as the class it was raised as."""
    deadline = time.monotonic() + timeout
    while True:
        task = context.store.read(schema.task(task_id))
        if task is None:
            raise errors.NotFound(f"no task '{task_id}'")
        if task["state"] == "failed":
            error_class = getattr(errors, task.get("error_class") or "", None)
            if not (isinstance(error_class, type) and issubclass(error_class, PVCError)):
                error_class = errors.OperationFailed
            raise error_class(f"VM '{task['vm']}' was not created: {task['error']}")
        if task["state"] == "done":
            return task
        if time.monotonic() > deadline:
            raise Unavailable(f"the creation of VM '{task['vm']}' has not finished after {timeout:g} s; it goes "
                              f"on as task {task_id}")
        time.sleep(0.2)


class ProvisionExecution:
    """One run of a ``provision`` task on the leader (`pvc.rpc.tasks.TaskRunner` calls `run`)."""

    def __init__(self, context: CoordinatorContext, storage: Any, vms: Any, task: dict[str, Any],
                 leader_node: str):
        self._context = context
        self._storage = storage
        self._vms = vms
        self.task = task
        self._plan = task["plan"]
        self._leader_node = leader_node

    def run(self) -> None:
        self._save(state="running", attempts=self.task.get("attempts", 0) + 1)
        try:
            if self.task.get("rollback") is None:
                if self.task["attempts"] > MAX_ATTEMPTS:
                    raise Unavailable(f"gave up after {MAX_ATTEMPTS} attempts: {self.task.get('last_error')}")
                self._create()
                return
        except TRANSIENT as error:
            if isinstance(error, NotLeader) or self.task["attempts"] <= MAX_ATTEMPTS:
                self._note(error)
                raise
            self._save(rollback=str(error), error_class=type(error).__name__)
        except PVCError as error:
            log.warning("creation of VM %s failed: %s; removing what it made", self._plan["vm"], error)
            self._save(rollback=str(error), error_class=type(error).__name__)
        except Exception as error:
            self._note(error)  # tried again like a transient error, but a creation that gives up says why
            raise
        self._roll_back()

    # -- creating -------------------------------------------------------------------------------------

    def _create(self) -> None:
        if not self._defined():
            for volume in self._plan["volumes"]:
                self._ensure(volume["pool"], volume["name"], lambda volume=volume: self._make(volume))
            drive = self._plan["config_drive"]
            if drive:
                self._ensure(drive["pool"], drive["name"], lambda: self._write_config_drive(drive))
            if self._plan.get("script"):
                self._run_script()
            self._define()
        self._record_origin()
        self._reserve()
        if self._plan["start"]:
            try:
                self._vms.start(self._plan["vm"])
            except TRANSIENT:
                raise
            except PVCError as error:
                self.task["start_error"] = str(error)
        self._save(state="done", finished=time.time(), last_error=None)
        log.info("VM %s created (task %s)", self._plan["vm"], self.task["id"])

    def _defined(self) -> bool:
        return self._context.store.read(schema.vm_uuid(self._plan["uuid"])) == self._plan["vm"]

    def _ensure(self, pool: str, name: str, make: Callable[[], None]) -> None:
        """Make one volume unless this task made it already. A volume of that name that the task did not begin
        is someone else's: the plan fails rather than take it."""
        key = f"{pool}/{name}"
        record = self._context.store.read(schema.volume(pool, name))
        if record is not None and record.get("intent"):
            self._storage.check(pool)
            record = self._context.store.read(schema.volume(pool, name))
        recorded = record is not None
        if key in self.task["made"]:
            if recorded:
                return
            self._remove_unrecorded(pool, name)
        elif recorded:
            raise AlreadyExists(f"volume '{key}' was made by someone else meanwhile")
        else:
            self._save(made=[*self.task["made"], key])
        try:
            make()
        except AlreadyExists:
            self._save(made=[entry for entry in self.task["made"] if entry != key])
            raise AlreadyExists(f"volume '{key}' was made by someone else meanwhile") from None

    def _make(self, volume: dict[str, Any]) -> None:
        pool, name, size = volume["pool"], volume["name"], volume["size_bytes"]
        if volume["source"] is None:
            self._storage.volume_add(pool, name, size)
            return
        made = self._storage.volume_clone(pool, volume["source"], name, linked=bool(self._plan.get("ova")))
        if size is not None and size > made["size_bytes"]:
            self._storage.volume_resize(pool, name, size)

    def _write_config_drive(self, drive: dict[str, Any]) -> None:
        """Upload the ISO image like any raw image, over the bulk channel to the node that writes it."""
        image = cloud_init.config_drive(self._plan["vm"], self._plan["user_data"])
        pool, name = drive["pool"], drive["name"]
        with bulk.SpooledSource(io.BytesIO(image)) as source:
            checksum = bulk.checksum_of_bytes(image)
            ticket = self._storage.upload_begin(pool, name, source.size, checksum, "raw")
            bulk.stream_upload(ticket["address"], ticket["token"], source, checksum, UPLOAD_CONNECT_TIMEOUT_S,
                               None, bulk.client_context(ticket, self._context.settings.get("tls_ca")))
        self._storage.upload_end(pool, name)

    # -- the install script ---------------------------------------------------------------------------

    def _run_script(self) -> None:
        """Run the profile's install script on a node that enables scripts, as a recorded step: its run is
        recorded (``script``: node, run id) before the node is asked to start it, so a leader that takes over
        asks that node about that run and starts another only when the node says it never began (``unknown``)
        or died (``dead``); a node it cannot reach is waited for, never bypassed. The node kills the script at
        its time limit, so waiting on a ``running`` report ends."""
        while True:
            step = self.task.get("script") or {}
            if step.get("state") == "done":
                return
            if step.get("state") in (None, "dead", "unknown"):
                step = self._start_script_run(step)
            status = self._script_call(step["node"], "script_status", step["run_id"])
            if status["state"] == "running":
                if not self._context.leadership.is_leader:
                    raise NotLeader("no longer the leader while the install script runs; the next leader waits "
                                    "for it")
                time.sleep(SCRIPT_POLL_S)
                continue
            if status["state"] in ("dead", "unknown"):
                log.warning("install script run %s on %s is %s; running it again", step["run_id"], step["node"],
                            status["state"])
                self._save(script={**step, "state": status["state"]})
                continue
            self._finish_script(step, status)
            return

    def _start_script_run(self, step: dict[str, Any]) -> dict[str, Any]:
        node = self._script_node()
        runs = step.get("runs", 0) + 1
        step = {"state": "running", "node": node, "run_id": f"{self.task['id']}-{runs}", "runs": runs,
                "started": time.time()}
        self._save(script=step)
        script = self._plan["script"]
        self._script_call(node, "script_start", step["run_id"], script["text"], script["input"])
        return step

    def _finish_script(self, step: dict[str, Any], status: dict[str, Any]) -> None:
        failed = status.get("exit_code") != 0 or status.get("timed_out")
        output = status.get("output") or ""
        self._save(script={**step, "state": "done", "exit_code": status.get("exit_code"),
                           "timed_out": bool(status.get("timed_out")), "output": output,
                           "finished": time.time()})
        try:
            self._script_call(step["node"], "script_forget", step["run_id"])
        except PVCError as error:
            log.info("install script run %s not cleared on %s: %s", step["run_id"], step["node"], error)
        if failed:
            last = next((line for line in reversed(output.splitlines()) if line.strip()), "no output")
            why = "was killed at its time limit" if status.get("timed_out") else \
                f"exited with status {status.get('exit_code')}"
            raise errors.OperationFailed(f"install script '{self._plan['script']['name']}' {why}: {last}")

    def _script_node(self) -> str:
        for node, raw in sorted(self._context.cache.nodes.snapshot().items()):
            facts = raw.get(OWN_VALUE) or {}
            if raw.get("daemon_state") == "run" and facts.get("provisioner_scripts") \
                    and facts.get("storage_agent_uri"):
                return node
        raise Unavailable("no running node runs install scripts now; waiting for one")

    def _script_call(self, node: str, method: str, *args: Any) -> Any:
        facts = (self._context.cache.nodes.get(node) or {}).get(OWN_VALUE) or {}
        if not facts.get("storage_agent_uri"):
            raise Unavailable(f"node {node}, which runs install script step {method}, has no agent now")
        return self._context.agents.call(node, facts["storage_agent_uri"], method, *args)

    def _define(self) -> None:
        try:
            self._vms.define(self._plan["xml"], **self._plan["meta"])
        except AlreadyExists:
            if not self._defined():
                raise

    def _record_origin(self) -> None:
        """Name the OVA in the VM's record, unless done already or the VM is gone. The write is checked against
        the record's version, so a command changing the VM meanwhile is never undone: the next tick tries again."""
        ova = self._plan.get("ova")
        if ova is None:
            return
        path = schema.vm(self._plan["vm"])
        try:
            data, stat = self._context.store.zk.get(path)
        except NoNodeError:
            return
        spec = schema.decode(data) or {}
        if spec.get("uuid") != self._plan["uuid"] or spec.get(MADE_FROM) == {"ova": ova}:
            return
        try:
            self._context.store.transaction(self._leader_node) \
                .set(path, {**spec, MADE_FROM: {"ova": ova}}, stat.version).commit()
        except (Conflict, errors.NotFound):
            raise Busy(f"VM '{self._plan['vm']}' changed while its origin was recorded; trying again") from None
        self._context.cache.vms.refresh(self._plan["vm"])

    def _reserve(self) -> None:
        """The DHCP reservations the network template asked for, once the VM (and so its MACs) exists; a run
        finds a reservation an earlier run made and keeps it. One that cannot be made (the network filled up or
        went since the plan was checked) leaves the VM as made, and says why (``reservation_error``)."""
        for reservation in self._plan.get("reservations") or []:
            try:
                made = network_use.reserve(self._context.store, self._context.name, reservation["network"],
                                           reservation["mac"], self._plan["vm"])
            except TRANSIENT:
                raise
            except PVCError as error:
                self.task["reservation_error"] = str(error)
                continue
            log.info("VM %s: %s reserved on network %s for %s", self._plan["vm"], made["ip"], made["vni"],
                     made["mac"])

    # -- rolling back ---------------------------------------------------------------------------------

    def _roll_back(self) -> None:
        """Remove every volume this task made, then end it failed; a transient failure here is retried on the
        next tick (the task stays rolling back)."""
        if self._defined():
            self._save(state="done", finished=time.time(), rollback=None)
            return
        for key in reversed(self.task["made"]):
            pool, name = key.split("/")
            raw = self._context.store.read(schema.volume(pool, name))
            if raw is not None:
                self._storage.volume_remove(pool, name)
            else:
                self._remove_unrecorded(pool, name)
            self._save(made=[entry for entry in self.task["made"] if entry != key])
        self._save(state="failed", finished=time.time(), error=self.task["rollback"])

    def _remove_unrecorded(self, pool: str, name: str) -> None:
        """Clear what a storage action cut off before its record may have left in the backend."""
        backend = (self._context.store.read(schema.pool(pool)) or {}).get("backend")
        for node, raw in sorted(self._context.cache.nodes.snapshot().items()):
            facts = raw.get(OWN_VALUE) or {}
            if raw.get("daemon_state") == "run" and facts.get("storage_agent_uri") \
                    and facts.get("storage_backend") == backend:
                self._context.agents.call(node, facts["storage_agent_uri"], "volume_remove", pool, name,
                                          timeout=STORAGE_ACTION_TIMEOUT_S)
                return
        raise Unavailable(f"no running node with the '{backend}' storage backend to clear '{pool}/{name}'")

    # -- recording ------------------------------------------------------------------------------------

    def _note(self, error: Exception) -> None:
        if isinstance(error, NotLeader):
            return
        said = str(error) if isinstance(error, PVCError) else f"{type(error).__name__}: {error}"
        try:
            self._save(last_error=said)
        except PVCError:
            pass

    def _save(self, **changes: Any) -> None:
        self.task.update(changes)
        self._context.store.transaction(self._leader_node).set(schema.task(self.task["id"]), self.task).commit()


def executor(context: CoordinatorContext, storage: Any, vms: Any) -> Callable[..., ProvisionExecution]:
    """How `pvc.rpc.tasks.TaskRunner` runs a ``provision`` task: its signature, with the areas bound."""
    def make(_context: CoordinatorContext, _control: Any, task: dict[str, Any], leader_node: str,
             _parallelism: int) -> ProvisionExecution:
        return ProvisionExecution(context, storage, vms, task, leader_node)
    return make
