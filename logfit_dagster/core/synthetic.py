"""A generator of realistic labelled logs in real formats: the embedded default sources.

Four kinds, each deterministic for a seed and sized by a target line count:

- ``hdfs``: HDFS_v1-style block lifecycles (allocate, receive, replicate, verify, delete) with the
  anomaly kinds of HDFS_v1 injected into some blocks;
- ``openstack``: nova-style VM instance lifecycles, some instances failing;
- ``bgl``: BGL-style RAS lines whose first field is ``-`` or an alert category;
- ``javaapp``: an application log with multi-line Java stack traces.

Every generated line carries its label (1 = anomalous) and a detail saying why; session-keyed
kinds also label each session (block or instance).
"""

from __future__ import annotations

import calendar
import hashlib
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta

SYNTHETIC_KINDS = ("hdfs", "openstack", "bgl", "javaapp")


@dataclass
class SyntheticLog:
    """Generated lines with their labels."""

    lines: list[str]
    line_labels: list[int]
    line_details: list[str]
    session_labels: dict[str, tuple[int, str]] = field(default_factory=dict)
    #: the time of the last line: where the next chunk of a long source starts
    end: datetime | None = None


@dataclass(order=True)
class _Event:
    time: float
    seq: int
    text: str = field(compare=False)
    label: int = field(compare=False, default=0)
    detail: str = field(compare=False, default="")


def _ip(rng: random.Random) -> str:
    return f"10.25{rng.randint(0, 1)}.{rng.randint(1, 254)}.{rng.randint(1, 254)}"


def _block_id(rng: random.Random) -> str:
    return f"blk_{rng.choice(['', '-'])}{rng.randint(10**17, 9 * 10**18)}"


_HDFS_ANOMALIES = (
    "failed_replication",
    "receive_exception",
    "serve_exception",
    "delete_missing",
    "redundant_add",
    "orphan_block",
    # Two kinds that event counts cannot see: the same events in the wrong order, and an event
    # never logged before (absent from every training session, so no count feature has it).
    "out_of_order",
    "unseen_event",
)

# Events each of which appears in at most a few blocks: an "unseen_event" block shows one.
_RARE_HDFS_EVENTS = (
    "Checksum mismatch on {block} reported by /{node}, replica quarantined",
    "Lease recovery for {block} started by an unknown client",
    "Generation stamp of {block} is newer than the namenode's record",
    "Block {block} scheduled for balancing but its pool is gone",
    "Replica of {block} found on a decommissioned volume /{node}",
    "Clock skew of more than a minute while committing {block}",
    "Short-circuit read of {block} refused: descriptor leaked",
    "Heartbeat from /{node} lists {block} twice",
)


def _hdfs_block(rng: random.Random, start: float, seq: list[int], anomaly: str | None) -> list:
    """The events of one block's life, with an injected anomaly of HDFS_v1's kinds."""
    block = _block_id(rng)
    nodes = [_ip(rng) for _ in range(3)]
    events: list[_Event] = []
    t = start

    def emit(dt: float, pid: int, level: str, component: str, content: str, bad: str = ""):
        nonlocal t
        t += dt
        seq[0] += 1
        events.append(
            _Event(t, seq[0], f"{pid} {level} {component}: {content}", int(bool(bad)), bad)
        )

    job = f"job_2008110920{rng.randint(10, 59)}_{rng.randint(1, 9999):04d}"
    part = rng.randint(0, 2000)
    emit(
        0,
        rng.choice([19, 26, 27, 35]),
        "INFO",
        "dfs.FSNamesystem",
        f"BLOCK* NameSystem.allocateBlock: /user/root/rand/_temporary/_task_{job[4:]}_m_{part:06d}_0"
        f"/part-{part:05d}. {block}",
    )
    size = rng.choice([67108864, 67108864, 67108864, rng.randint(1000, 67108863)])
    for i, node in enumerate(nodes):
        src = nodes[i - 1] if i else _ip(rng)
        emit(
            rng.random(),
            rng.randint(100, 400),
            "INFO",
            "dfs.DataNode$DataXceiver",
            f"Receiving block {block} src: /{src}:{rng.randint(30000, 60000)} dest: /{node}:50010",
        )
    if anomaly == "receive_exception":
        node = rng.choice(nodes)
        emit(
            rng.random() * 20,
            rng.randint(100, 400),
            "INFO",
            "dfs.DataNode$DataXceiver",
            f"Exception in receiveBlock for block {block} java.io.IOException: Connection reset by peer",
            anomaly,
        )
        emit(
            0.01,
            rng.randint(100, 400),
            "INFO",
            "dfs.DataNode$PacketResponder",
            f"PacketResponder {block} 1 Exception java.io.InterruptedIOException: Interruped while "
            f"waiting for IO on channel java.nio.channels.SocketChannel[connected local=/{node}:"
            f"{rng.randint(30000, 60000)}]. 0 millis timeout left.",
            anomaly,
        )
        emit(
            0.01,
            rng.randint(100, 400),
            "INFO",
            "dfs.DataNode$DataXceiver",
            f"writeBlock {block} received exception java.io.IOException: Could not read from stream",
            anomaly,
        )
    for i, node in enumerate(nodes):
        emit(
            rng.random() * 30,
            rng.randint(100, 400),
            "INFO",
            "dfs.DataNode$PacketResponder",
            f"PacketResponder {2 - i} for block {block} terminating",
        )
        emit(
            0.001,
            rng.randint(100, 400),
            "INFO",
            "dfs.DataNode$PacketResponder",
            f"Received block {block} of size {size} from /{node}",
        )
        emit(
            rng.random(),
            rng.choice([19, 26, 27, 35]),
            "INFO",
            "dfs.FSNamesystem",
            f"BLOCK* NameSystem.addStoredBlock: blockMap updated: {node}:50010 is added to {block} "
            f"size {size}",
        )
    if anomaly == "redundant_add":
        emit(
            rng.random() * 60,
            rng.choice([19, 26, 27, 35]),
            "WARN",
            "dfs.FSNamesystem",
            f"BLOCK* NameSystem.addStoredBlock: Redundant addStoredBlock request received for "
            f"{block} on {rng.choice(nodes)}:50010 size {size}",
            anomaly,
        )
    if anomaly == "orphan_block":
        emit(
            rng.random() * 60,
            rng.choice([19, 26, 27, 35]),
            "INFO",
            "dfs.FSNamesystem",
            f"BLOCK* NameSystem.addStoredBlock: addStoredBlock request received for {block} on "
            f"{rng.choice(nodes)}:50010 size {size} But it does not belong to any file.",
            anomaly,
        )
    if anomaly == "out_of_order":
        # the allocation logged after the block's data arrived: every event is a normal one
        first = events.pop(0)
        events.append(_Event(t + rng.random(), first.seq, first.text, 1, anomaly))
        t += 1.0
    if anomaly == "unseen_event":
        emit(
            rng.random() * 30,
            rng.randint(100, 400),
            "WARN",
            "dfs.DataNode",
            rng.choice(_RARE_HDFS_EVENTS).format(block=block, node=rng.choice(nodes)),
            anomaly,
        )
    if rng.random() < 0.3:
        emit(
            rng.random() * 600,
            rng.randint(100, 400),
            "INFO",
            "dfs.DataBlockScanner",
            f"Verification succeeded for {block}",
        )
    if anomaly == "serve_exception" or rng.random() < 0.15:
        node, target = rng.choice(nodes), _ip(rng)
        if anomaly == "serve_exception":
            emit(
                rng.random() * 300,
                rng.randint(100, 400),
                "WARN",
                "dfs.DataNode$DataXceiver",
                f"{node}:50010:Got exception while serving {block} to /{target}:",
                anomaly,
            )
        else:
            emit(
                rng.random() * 300,
                rng.randint(100, 400),
                "INFO",
                "dfs.DataNode$DataXceiver",
                f"{node}:50010 Served block {block} to /{target}",
            )
    if anomaly == "failed_replication" or rng.random() < 0.1:
        node, target = rng.choice(nodes), _ip(rng)
        emit(
            rng.random() * 600,
            rng.choice([19, 26, 27, 35]),
            "INFO",
            "dfs.FSNamesystem",
            f"BLOCK* ask {node}:50010 to replicate {block} to datanode(s) {target}:50010",
        )
        emit(
            rng.random() * 3,
            rng.randint(100, 400),
            "INFO",
            "dfs.DataNode",
            f"{node}:50010 Starting thread to transfer block {block} to {target}:50010",
        )
        if anomaly == "failed_replication":
            emit(
                rng.random() * 3,
                rng.randint(100, 400),
                "WARN",
                "dfs.DataNode",
                f"{node}:50010:Failed to transfer {block} to {target}:50010 got "
                "java.io.IOException: Connection reset by peer",
                anomaly,
            )
        else:
            emit(
                rng.random() * 3,
                rng.randint(100, 400),
                "INFO",
                "dfs.DataNode$DataTransfer",
                f"{node}:50010:Transmitted block {block} to /{target}:50010",
            )
    if anomaly == "delete_missing" or rng.random() < 0.4:
        t += rng.random() * 3000
        for node in nodes:
            emit(
                rng.random(),
                rng.choice([19, 26, 27, 35]),
                "INFO",
                "dfs.FSNamesystem",
                f"BLOCK* NameSystem.delete: {block} is added to invalidSet of {node}:50010",
            )
        for node in nodes:
            if anomaly == "delete_missing" and node == nodes[0]:
                emit(
                    rng.random() * 10,
                    rng.randint(10, 40),
                    "WARN",
                    "dfs.FSDataset",
                    f"Unexpected error trying to delete block {block}. BlockInfo not found in "
                    "volumeMap.",
                    anomaly,
                )
            else:
                emit(
                    rng.random() * 10,
                    rng.randint(10, 40),
                    "INFO",
                    "dfs.FSDataset",
                    f"Deleting block {block} file /mnt/hadoop/dfs/data/current/subdir"
                    f"{rng.randint(0, 63)}/{block}",
                )
    return [block, events]


def _interleave(events: list[_Event], start: datetime, stamp: Callable[[datetime], str]) -> list:
    events.sort()
    return [(stamp(start + timedelta(seconds=e.time)), e) for e in events]


def generate_hdfs(
    n_lines: int, seed: int, anomaly_rate: float = 0.03, start: datetime | None = None
) -> SyntheticLog:
    """HDFS_v1-style logs: blocks are sessions, labelled by whether an anomaly was injected."""
    rng = random.Random(seed)
    seq = [0]
    events: list[_Event] = []
    sessions: dict[str, tuple[int, str]] = {}
    t = 0.0
    while len(events) < n_lines:
        anomaly = rng.choice(_HDFS_ANOMALIES) if rng.random() < anomaly_rate else None
        block, block_events = _hdfs_block(rng, t, seq, anomaly)
        sessions[block] = (int(anomaly is not None), anomaly or "")
        events.extend(block_events)
        t += rng.expovariate(1 / 2.0)
    start = start or datetime(2008, 11, 9, 20, 35, 18)
    stamped = _interleave(events, start, lambda d: d.strftime("%y%m%d %H%M%S"))[:n_lines]
    return SyntheticLog(
        lines=[f"{ts} {e.text}" for ts, e in stamped],
        line_labels=[e.label for _, e in stamped],
        line_details=[e.detail for _, e in stamped],
        session_labels=sessions,
        end=start + timedelta(seconds=events[min(n_lines, len(events)) - 1].time),
    )


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{h[16:20]}-{h[20:]}"


_OPENSTACK_FAILURES = ("spawn_failed", "network_failed", "unexpected_shutdown", "libvirt_error")


def generate_openstack(
    n_lines: int, seed: int, anomaly_rate: float = 0.08, start: datetime | None = None
) -> SyntheticLog:
    """nova-style logs: instances are sessions; failing instances are anomalous."""
    rng = random.Random(seed)
    tenant = f"{rng.getrandbits(128):032x}"
    user = f"{rng.getrandbits(128):032x}"
    seq = [0]
    events: list[_Event] = []
    sessions: dict[str, tuple[int, str]] = {}

    def add(t: float, logfile: str, pid: int, level: str, comp: str, body: str, bad: str = ""):
        seq[0] += 1
        req = f"req-{_uuid(rng)} {user} {tenant} - - -"
        events.append(
            _Event(t, seq[0], f"{logfile}|{pid} {level} {comp} [{req}] {body}", int(bool(bad)), bad)
        )

    api, compute = "nova-api.log.1.2017-05-16_13:53:08", "nova-compute.log.1.2017-05-16_13:55:31"
    t = 0.0
    while len(events) < n_lines:
        for _ in range(rng.randint(2, 6)):
            t += rng.random() * 2
            add(
                t,
                api,
                25746,
                "INFO",
                "nova.osapi_compute.wsgi.server",
                f'10.11.10.1 "GET /v2/{tenant}/servers/detail HTTP/1.1" status: 200 '
                f"len: {rng.randint(1500, 2000)} time: {rng.random():.7f}",
            )
        inst = _uuid(rng)
        failure = rng.choice(_OPENSTACK_FAILURES) if rng.random() < anomaly_rate else None
        sessions[inst] = (int(failure is not None), failure or "")
        i = f"[instance: {inst}]"
        t += rng.random()
        add(
            t,
            api,
            25746,
            "INFO",
            "nova.osapi_compute.wsgi.server",
            f'10.11.10.1 "POST /v2/{tenant}/servers HTTP/1.1" status: 202 len: 733 '
            f"time: {rng.random():.7f}",
        )
        mem, disk = rng.choice([(2048, 20), (4096, 40), (512, 1)])
        add(
            t + 0.3,
            compute,
            2931,
            "INFO",
            "nova.compute.claims",
            f"{i} Attempting claim: memory {mem} MB, disk {disk} GB, vcpus 1 CPU",
        )
        add(t + 0.31, compute, 2931, "INFO", "nova.compute.claims", f"{i} Claim successful")
        if failure == "network_failed":
            add(
                t + 2.0,
                compute,
                2931,
                "ERROR",
                "nova.compute.manager",
                f"{i} Instance failed network setup after 1 attempt(s)",
                failure,
            )
            add(
                t + 2.1,
                compute,
                2931,
                "ERROR",
                "nova.compute.manager",
                f"{i} Build of instance {inst} aborted: Failed to allocate the network(s), not "
                "rescheduling.",
                failure,
            )
            t += 3
            continue
        add(t + 1.0, compute, 2931, "INFO", "nova.virt.libvirt.driver", f"{i} Creating image")
        if failure in ("spawn_failed", "libvirt_error"):
            add(
                t + 5.0,
                compute,
                2931,
                "ERROR",
                "nova.virt.libvirt.driver",
                f"{i} Error launching a defined domain with XML: <domain type='kvm'>",
                failure,
            )
            add(
                t + 5.1,
                compute,
                2931,
                "ERROR",
                "nova.compute.manager",
                f"{i} Instance failed to spawn",
                failure,
            )
            add(t + 5.2, compute, 2931, "INFO", "nova.compute.manager", f"{i} Terminating instance")
            t += 6
            continue
        spawn = 10 + rng.random() * 15
        add(
            t + spawn,
            compute,
            2931,
            "INFO",
            "nova.compute.manager",
            f"{i} VM Started (Lifecycle Event)",
        )
        add(
            t + spawn + 0.1,
            compute,
            2931,
            "INFO",
            "nova.compute.manager",
            f"{i} VM Resumed (Lifecycle Event)",
        )
        add(
            t + spawn + 0.2,
            compute,
            2931,
            "INFO",
            "nova.compute.manager",
            f"{i} Took {spawn - 1:.2f} seconds to spawn the instance on the hypervisor.",
        )
        add(
            t + spawn + 0.3,
            compute,
            2931,
            "INFO",
            "nova.compute.manager",
            f"{i} Took {spawn:.2f} seconds to build instance.",
        )
        life = spawn + 20 + rng.random() * 60
        if failure == "unexpected_shutdown":
            add(
                t + life,
                compute,
                2931,
                "INFO",
                "nova.compute.manager",
                f"{i} VM Stopped (Lifecycle Event)",
            )
            add(
                t + life + 0.5,
                compute,
                2931,
                "WARNING",
                "nova.compute.manager",
                f"{i} Instance shutdown by itself. Calling the stop API. Current vm_state: active,"
                " current task_state: None, original DB power_state: 1, current VM power_state: 4",
                failure,
            )
            t += 4
            continue
        add(
            t + life,
            api,
            25746,
            "INFO",
            "nova.osapi_compute.wsgi.server",
            f'10.11.10.1 "DELETE /v2/{tenant}/servers/{inst} HTTP/1.1" status: 204 len: 203 '
            f"time: {rng.random():.7f}",
        )
        add(
            t + life + 0.2,
            compute,
            2931,
            "INFO",
            "nova.compute.manager",
            f"{i} Terminating instance",
        )
        add(
            t + life + 0.9,
            compute,
            2931,
            "INFO",
            "nova.virt.libvirt.driver",
            f"{i} Instance destroyed successfully.",
        )
        add(
            t + life + 1.0,
            compute,
            2931,
            "INFO",
            "nova.virt.libvirt.driver",
            f"{i} Deleting instance files /var/lib/nova/instances/{inst}_del",
        )
        add(
            t + life + 1.1,
            compute,
            2931,
            "INFO",
            "nova.virt.libvirt.driver",
            f"{i} Deletion of /var/lib/nova/instances/{inst}_del complete",
        )
        add(
            t + life + 1.2,
            compute,
            2931,
            "INFO",
            "nova.compute.manager",
            f"{i} Took {rng.random() + 0.5:.2f} seconds to destroy the instance on the hypervisor.",
        )
        add(
            t + life + 1.5,
            compute,
            2931,
            "INFO",
            "nova.compute.manager",
            f"{i} VM Stopped (Lifecycle Event)",
        )
        t += 4 + rng.random() * 4
    start = start or datetime(2017, 5, 16, 0, 0, 0)
    stamped = _interleave(
        events, start, lambda d: d.strftime("%Y-%m-%d %H:%M:%S.") + f"{d.microsecond // 1000:03d}"
    )[:n_lines]
    lines = []
    for ts, e in stamped:
        logfile, rest = e.text.split("|", 1)
        lines.append(f"{logfile} {ts} {rest}")
    return SyntheticLog(
        lines=lines,
        line_labels=[e.label for _, e in stamped],
        line_details=[e.detail for _, e in stamped],
        session_labels=sessions,
        end=start + timedelta(seconds=events[min(n_lines, len(events)) - 1].time),
    )


_BGL_NORMAL = (
    ("RAS", "KERNEL", "INFO", lambda r: "instruction cache parity error corrected"),
    ("RAS", "KERNEL", "INFO", lambda r: f"generating core.{r.randint(100, 9999)}"),
    ("RAS", "KERNEL", "INFO", lambda r: f"{r.randint(1, 30)} double-hummer alignment exceptions"),
    (
        "RAS",
        "KERNEL",
        "INFO",
        lambda r: (
            f"CE sym {r.randint(0, 31)}, at 0x{r.getrandbits(32):08x}, mask 0x{r.randint(1, 255):02x}"
        ),
    ),
    (
        "RAS",
        "KERNEL",
        "INFO",
        lambda r: f"total of {r.randint(1, 40)} ddr error(s) detected and corrected",
    ),
    (
        "RAS",
        "APP",
        "INFO",
        lambda r: f"ciod: generated {r.randint(1, 128)} core files for program /bgl/apps/run.elf",
    ),
    ("RAS", "MMCS", "INFO", lambda r: "ciod: Message code 0 is not 51 or 4294967295"),
    ("RAS", "KERNEL", "INFO", lambda r: "program interrupt: fp cr update"),
)

_BGL_ALERTS = (
    ("KERNDTLB", "RAS", "KERNEL", "FATAL", lambda r: "data TLB error interrupt"),
    ("KERNSTOR", "RAS", "KERNEL", "FATAL", lambda r: "data storage interrupt"),
    (
        "APPREAD",
        "RAS",
        "APP",
        "FATAL",
        lambda r: (
            "ciod: failed to read message prefix on control stream (CioStream socket to "
            f"172.16.96.{r.randint(1, 254)}:{r.randint(30000, 60000)}"
        ),
    ),
    ("KERNMC", "RAS", "KERNEL", "FATAL", lambda r: "machine check interrupt"),
    (
        "APPSEV",
        "RAS",
        "APP",
        "FATAL",
        lambda r: (
            "ciod: Error reading message prefix after LOAD_MESSAGE on CioStream socket to "
            f"172.16.96.{r.randint(1, 254)}:{r.randint(30000, 60000)}: Link has been severed"
        ),
    ),
    ("KERNRTSP", "RAS", "KERNEL", "FATAL", lambda r: "rts panic! - stopping execution"),
    ("KERNPAN", "RAS", "KERNEL", "FATAL", lambda r: "kernel panic"),
)


def generate_bgl(
    n_lines: int, seed: int, burst_rate: float = 0.002, start: datetime | None = None
) -> SyntheticLog:
    """BGL-style RAS lines; alerts come in bursts and their first field names the category."""
    rng = random.Random(seed)
    t = start or datetime(2005, 6, 3, 15, 42, 50)
    lines, labels, details = [], [], []
    nodes = [
        f"R{r:02d}-M{m}-N{n}-C:J{j:02d}-U{u:02d}"
        for r, m, n, j, u in (
            (
                rng.randint(0, 7),
                rng.randint(0, 1),
                rng.randint(0, 15),
                rng.randint(2, 18),
                rng.randint(1, 11),
            )
            for _ in range(64)
        )
    ]
    burst = 0
    alert = _BGL_ALERTS[0]
    while len(lines) < n_lines:
        t += timedelta(microseconds=rng.randint(10_000, 4_000_000))
        node = rng.choice(nodes)
        if burst == 0 and rng.random() < burst_rate:
            burst, alert = rng.randint(2, 12), rng.choice(_BGL_ALERTS)
        if burst:
            burst -= 1
            category, kind, comp, level, text = alert
        else:
            category = "-"
            kind, comp, level, text = rng.choice(_BGL_NORMAL)
        stamp = calendar.timegm(t.timetuple())
        lines.append(
            f"{category} {stamp} {t:%Y.%m.%d} {node} {t:%Y-%m-%d-%H.%M.%S.%f} {node} "
            f"{kind} {comp} {level} {text(rng)}"
        )
        labels.append(int(category != "-"))
        details.append("" if category == "-" else category)
    return SyntheticLog(lines, labels, details, end=t)


_JAVA_OK = (
    (
        "INFO",
        "com.acme.orders.OrderService",
        lambda r: (
            f"Order {r.randint(1000, 99999)} created for customer {r.randint(1, 5000)} "
            f"total {r.randint(1, 900)}.{r.randint(0, 99):02d} EUR"
        ),
    ),
    (
        "INFO",
        "com.acme.http.AccessLog",
        lambda r: f"GET /api/orders/{r.randint(1000, 99999)} 200 {r.randint(2, 90)}ms",
    ),
    (
        "DEBUG",
        "com.acme.cache.CacheManager",
        lambda r: f"Cache hit ratio {r.random():.2f} for region orders",
    ),
    (
        "INFO",
        "com.acme.payments.PaymentClient",
        lambda r: f"Payment {r.randint(10**6, 10**7)} authorized in {r.randint(20, 400)} ms",
    ),
    (
        "WARN",
        "com.acme.db.SlowQueryLog",
        lambda r: f"Query took {r.randint(500, 1500)} ms: SELECT * FROM orders WHERE id = ?",
    ),
)

_JAVA_ERRORS = (
    (
        "com.acme.payments.PaymentClient",
        "Payment request failed for order {n}",
        "java.net.SocketTimeoutException: Read timed out",
        [
            "java.base/java.net.SocketInputStream.socketRead0(Native Method)",
            "com.acme.payments.PaymentClient.charge(PaymentClient.java:87)",
            "com.acme.orders.OrderService.checkout(OrderService.java:142)",
        ],
        "java.io.IOException: connection to payments-gateway:443 timed out",
    ),
    (
        "com.acme.db.ConnectionPool",
        "Cannot acquire connection for order {n}",
        "java.sql.SQLTransientConnectionException: HikariPool-1 - Connection is not available, "
        "request timed out after 30000ms.",
        [
            "com.zaxxer.hikari.pool.HikariPool.getConnection(HikariPool.java:213)",
            "com.acme.db.OrderRepository.save(OrderRepository.java:58)",
        ],
        None,
    ),
    (
        "com.acme.orders.OrderService",
        "Unexpected state for order {n}",
        "java.lang.IllegalStateException: order already shipped",
        [
            "com.acme.orders.OrderService.cancel(OrderService.java:201)",
            "com.acme.http.OrderController.cancel(OrderController.java:77)",
        ],
        None,
    ),
    (
        "com.acme.worker.JobRunner",
        "Job {n} crashed",
        "java.lang.OutOfMemoryError: Java heap space",
        [
            "java.base/java.util.Arrays.copyOf(Arrays.java:3512)",
            "com.acme.reports.ReportBuilder.render(ReportBuilder.java:311)",
        ],
        None,
    ),
)


def generate_javaapp(
    n_lines: int, seed: int, error_rate: float = 0.005, start: datetime | None = None
) -> SyntheticLog:
    """An application log; an ERROR record and its stack-trace lines are anomalous."""
    rng = random.Random(seed)
    t = start or datetime(2024, 3, 1, 12, 0, 0)
    lines, labels, details = [], [], []
    while len(lines) < n_lines:
        t += timedelta(milliseconds=rng.randint(1, 2000))
        stamp = f"{t:%Y-%m-%d %H:%M:%S},{t.microsecond // 1000:03d}"
        thread = f"http-nio-8080-exec-{rng.randint(1, 16)}"
        if rng.random() < error_rate:
            comp, message, exc, frames, cause = rng.choice(_JAVA_ERRORS)
            kind = exc.split(":")[0].rsplit(".", 1)[-1]
            record = [
                f"{stamp} ERROR [{thread}] {comp}: {message.format(n=rng.randint(1000, 99999))}",
                exc,
            ] + [f"\tat {f}" for f in frames]
            if cause:
                record += [f"Caused by: {cause}", f"\t... {rng.randint(3, 40)} more"]
            lines.extend(record)
            labels.extend([1] * len(record))
            details.extend([kind] * len(record))
        else:
            level, comp, text = rng.choice(_JAVA_OK)
            lines.append(f"{stamp} {level} [{thread}] {comp}: {text(rng)}")
            labels.append(0)
            details.append("")
    return SyntheticLog(lines[:n_lines], labels[:n_lines], details[:n_lines], end=t)


GENERATORS: dict[str, Callable[..., SyntheticLog]] = {
    "hdfs": generate_hdfs,
    "openstack": generate_openstack,
    "bgl": generate_bgl,
    "javaapp": generate_javaapp,
}

# The line format of each kind's output.
FORMAT_OF_KIND = {"hdfs": "HDFS", "openstack": "OpenStack", "bgl": "BGL", "javaapp": "JavaApp"}

#: Lines generated at a time: a longer source is made of chunks, each with its own seed (the
#: first with the source's), each starting where the last ended, so that memory stays flat.
CHUNK_LINES = 250_000


def generate(kind: str, n_lines: int, seed: int) -> SyntheticLog:
    """Generate ``n_lines`` lines of a kind, the same lines for the same seed (the chunks of
    :func:`generate_chunks`, joined)."""
    chunks = list(generate_chunks(kind, n_lines, seed))
    if len(chunks) == 1:
        return chunks[0]
    joined = SyntheticLog([], [], [], end=chunks[-1].end)
    for chunk in chunks:
        joined.lines += chunk.lines
        joined.line_labels += chunk.line_labels
        joined.line_details += chunk.line_details
        joined.session_labels.update(chunk.session_labels)
    return joined


def generate_chunks(
    kind: str, n_lines: int, seed: int, chunk_lines: int = CHUNK_LINES
) -> Iterator[SyntheticLog]:
    """``n_lines`` lines of a kind, ``chunk_lines`` at a time, in order: a source of any length
    in the memory of one chunk. Sessions never span chunks (each chunk's are its own)."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown synthetic kind {kind!r}; known: {', '.join(SYNTHETIC_KINDS)}")
    if n_lines < 1:
        raise ValueError(f"synthetic source needs at least one line, got lines={n_lines}")
    start, done, number = None, 0, 0
    while done < n_lines:
        size = min(chunk_lines, n_lines - done)
        log = GENERATORS[kind](
            size, seed if number == 0 else _chunk_seed(seed, number), start=start
        )
        if kind in _SESSION_ID:
            log.session_labels = _labels_of_kept_sessions(log, _SESSION_ID[kind])
        yield log
        start = log.end + timedelta(seconds=1)
        done += size
        number += 1


def _chunk_seed(seed: int, number: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{number}".encode()).digest()[:8], "big")


_SESSION_ID = {
    "hdfs": re.compile(r"blk_-?\d+"),
    "openstack": re.compile(r"\[instance: ([0-9a-f-]{36})\]"),
}


def _labels_of_kept_sessions(log: SyntheticLog, pattern: re.Pattern) -> dict[str, tuple[int, str]]:
    """Session labels as the kept lines show them: a session cut off by the line budget before
    its anomaly was written is labelled by what made it into the log, not by what was planned."""
    labels: dict[str, tuple[int, str]] = {}
    for line, label, detail in zip(log.lines, log.line_labels, log.line_details, strict=True):
        for match in pattern.finditer(line):
            key = match.group(match.lastindex or 0)
            if label:
                labels[key] = (1, detail)
            else:
                labels.setdefault(key, (0, ""))
    return labels
