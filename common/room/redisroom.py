"""One room across servers, through Redis (``--redis URL``, ``--room NAME``).

Keys, for the room ``R``, all with the hash tag ``{R}``: were the rooms
spread over the nodes of a Redis Cluster, each room's keys would still be
in one slot, as the scripts that touch several of them at once require:

* ``chat:{R}:log``, a stream: the room's one order. Each entry is one event
  (``joined``, ``left``, ``renamed``, ``msg``, ``dm``) as its JSON frame
  (``f``) with the server that published it (``s``) and that server's
  number for it (``n``; none for a ``left`` Redis writes). Trimmed with an
  approximate ``MAXLEN`` of ``--history`` (never under ``MIN_STREAM``, so a
  reader a moment behind loses nothing).
* ``chat:{R}:names``, a hash: name key -> ``TOKEN NAME``; ``TOKEN`` is
  ``SERVER:N/SESSION``, one per hello, with the session token its welcome
  gave. A name is claimed with one script, so two servers racing for it
  cannot both win. A resume on another server takes a name over with one
  script too (``TAKE``): if the session is the one that holds it, the name
  gets the new server's token and a takeover entry (``t``: the name key,
  no frame) goes in the stream, where every server meets it in the room's
  order: the server that held the session closes its connection without a
  word, the one that took it welcomes the client there.
* ``chat:{R}:servers``, a sorted set: server -> when its lease ends (Redis
  clock, ms).
* ``chat:{R}:seen``, a hash: server -> the last event number it published,
  so an event sent again after a lost connection is not added twice.
* ``chat:{R}:epoch``, a string: the epoch of the room's history (resume,
  protocol 1.2). It is made with the stream (an empty stream is made with
  it, so that servers starting together agree on one) and made anew when
  the stream is gone: Redis lost the room's history. The ids of the room's
  frames are the stream's entry ids, the same on every server.

Threads, each named and owned by this backplane, stopped by ``close``:

* ``redis-publisher`` sends what the room published, in order, in
  batches of one script call each (``PUBLISH``); while Redis is away it
  keeps it and sends it when it is back.
* ``redis-reader`` reads the stream from where it is and hands each batch
  to the room, in stream order: the server's own words reach its users only
  this way, so every server delivers one sequence.

What these two cost is the call, not the event, so each rests between two
calls (``PUBLISH_REST``, ``READ_REST``) and the next call carries all that
came meanwhile. Each has a connection of its own (``Wire``) on which a
command is packed, sent and read back with nothing else: redis-py's per-call
machinery (its pool, its hooks, its reply callbacks) costs about twice the
CPU of the round trip.
* ``redis-lease`` renews this server's lease every quarter lease and takes
  out the servers whose lease ended: their users leave (``disconnected``)
  and their names are free. It does not take anyone out for one lease after
  it (re)connects, so that servers coming back together have time to renew.

When Redis goes away, every user is told once (an ``error``; the protocol
has no code for it, so it is ``rate_limited`` with a text that says why)
and what needs the shared room is refused the same way until it is back
(``ready`` is False): the chat does not split into rooms that would each have their own
order. Where the link stands is one ``Link``, changed in one place (``_on``) along
``LINK_MOVES``. The reader goes on from the last entry it read, the publisher sends
what it kept, and ``seen`` drops what had already arrived: nothing is
delivered twice or out of order.

A Redis that restarted may have lost the names (or kept leases that ended
while it was down). Whoever sees it back first wakes the lease thread,
which renews at once and, if the lease was gone, claims this server's
names back in one pipeline and says ``joined`` for them (a room that knew
them already shows nothing: see ``Room.apply``). Meanwhile nobody may take
a new name: for ``restart_hold`` (``RESTART_HOLD``, at most a lease) after
Redis started, a server starting refuses to begin and one that was there
refuses hellos and renames (``Unavailable``), so the names of the servers
coming back are theirs again before anyone else can ask for them.
"""

from __future__ import annotations

import dataclasses
import enum
import itertools
import logging
import secrets
import threading
import time
from collections import deque
from typing import Any, cast

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from common.protocol.codec import (
    Error,
    Joined,
    Left,
    Msg,
    ProtocolError,
    Renamed,
    Unavailable,
    decode_server,
    name_key,
)
from common.room.room import Entry, Room, new_epoch, wall_clock_ms
from common.room.starterror import StartError

log = logging.getLogger("common.room.redisroom")

StreamRead = list[list[Any]]
"""What XREAD answers, as read off the wire (RESP2, bytes): per stream, its name and its
entries, each ``[id, [field, value, ...]]``."""

MIN_STREAM = 10_000
READ_AT_START = 1200
"""Entries a server reads back at start, at least, to find its ``--history`` messages among the
room's other events (it reads ``--history`` + 200 when that is more)."""
MAX_IN_FLIGHT = 1000
"""Events this server may have put in the order that have not come back to it yet; past it
the room is ``busy``: a TCP server's room holds new messages until it is under it again (the
talker's reader waits, and TCP's flow control slows the talker), a UDP server's refuses them.
A server past what it can carry would otherwise queue without bound, and its reader, falling
ever further behind, would find the stream trimmed past events it never read. With this bound
a reader that is behind at all is at most MAX_IN_FLIGHT of its own events behind (and the
few ``joined``, ``left`` and ``renamed`` said meanwhile), well within MIN_STREAM."""
READ_BLOCK_MS = 500
READ_COUNT = 1000
PUBLISH_BATCH = 500
PUBLISH_REST = 0.003
READ_REST = 0.004
"""Seconds the publisher and the reader rest between two calls that carried events, at least.
What costs is the call (a script run, a round trip, two thread wake-ups, several handovers of
the interpreter's lock), not the event: a call a message would cost the server and Redis
several times what the message costs the room. Resting gathers what comes meanwhile into the
next call (a few events at a few hundred messages a second, hundreds when busy) for a few
milliseconds more on the way, less than the TCP writer's own rest between two passes. After a
quiet spell the first event goes at once."""
RETRY_SECONDS = 0.25
CLOSE_WAIT = 2.0
RESTART_HOLD = 2.0
"""Seconds after Redis starts during which no new name is given out, at most (and at most a
lease): servers that were in the room reconnect within RETRY_SECONDS and claim theirs back."""
SOCKET_TIMEOUT = 3.0

CLAIM = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if held and string.match(held, '^([^:]+):') ~= ARGV[4] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. ' ' .. ARGV[3])
if ARGV[5] ~= '' and ARGV[5] ~= ARGV[1] then
  local old = redis.call('HGET', KEYS[1], ARGV[5])
  if old and string.sub(old, 1, #ARGV[2] + 1) == ARGV[2] .. ' ' then
    redis.call('HDEL', KEYS[1], ARGV[5])
  end
end
return 1
"""
"""KEYS: names. ARGV: key, token, name, server, old key or ''.

A name held by this server is its to give again: the room checked it is
free here, and a leaving member's release may still be on its way.
"""

PUBLISH = """
local seen = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
local last = seen
for i = 3, #ARGV, 4 do
  local number = tonumber(ARGV[i])
  if number > last then
    last = number
    local release, token = ARGV[i + 2], ARGV[i + 3]
    local add = true
    if release ~= '' then
      local held = redis.call('HGET', KEYS[3], release)
      if held and string.match(held, '^([^:]+):') ~= ARGV[1] then
        add = false
      elseif held and string.sub(held, 1, #token + 1) == token .. ' ' then
        redis.call('HDEL', KEYS[3], release)
      end
    end
    if add then
      redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 's', ARGV[1], 'n', ARGV[i],
        'f', ARGV[i + 1])
    end
  end
end
if last > seen then redis.call('HSET', KEYS[2], ARGV[1], last) end
return last
"""
"""KEYS: log, seen, names. ARGV: server, maxlen, then for each event of a batch, in order:
its number, frame, key to release or '', token.

One call a batch: an event whose number ``seen`` already has (sent again after a lost
connection) is skipped, the others are added in order and ``seen`` moves to the last.

A ``left`` whose name another server holds by now is not added: a resume there took the
session over (its grace here ran out at the same moment), and nobody is to see it leave."""

TAKE = """
local held = redis.call('HGET', KEYS[1], ARGV[1])
if not held or string.match(held, '^[^ /]*/([^ ]*) ') ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3] .. ' ' .. ARGV[4])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*', 's', ARGV[5], 't', ARGV[1])
return 1
"""
"""KEYS: names, log. ARGV: key, session, new token, name, server, maxlen."""

EPOCH = """
if redis.call('EXISTS', KEYS[1]) == 0 or redis.call('EXISTS', KEYS[2]) == 0 then
  redis.call('SET', KEYS[2], ARGV[1])
  if redis.call('EXISTS', KEYS[1]) == 0 then
    redis.call('XGROUP', 'CREATE', KEYS[1], 'epoch', '$', 'MKSTREAM')
  end
end
return redis.call('GET', KEYS[2])
"""
"""KEYS: log, epoch. ARGV: a new epoch, used if the stream or its epoch is missing."""

LEASE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local alive = redis.call('ZSCORE', KEYS[1], ARGV[1])
local gone = {}
local reason = 'disconnected'
if ARGV[3] == 'retire' then
  gone[ARGV[1]] = true
  reason = 'shutdown'
  redis.call('ZREM', KEYS[1], ARGV[1])
else
  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
  if ARGV[3] == 'reap' then
    for _, server in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now)) do
      gone[server] = true
      redis.call('ZREM', KEYS[1], server)
    end
  end
end
if next(gone) == nil then return alive and 1 or 0 end
local names = redis.call('HGETALL', KEYS[2])
for i = 1, #names, 2 do
  local owner, name = string.match(names[i + 1], '^([^:]+):%S* (.*)$')
  if gone[owner] then
    redis.call('HDEL', KEYS[2], names[i])
    local frame = cjson.encode({type = 'left', name = name, reason = reason, ts = now})
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 's', owner, 'f', frame)
  end
end
for server in pairs(gone) do redis.call('HDEL', KEYS[4], server) end
return alive and 1 or 0
"""
"""KEYS: servers, names, log, seen. ARGV: server, lease ms, 'renew'|'reap'|'retire', maxlen.

Returns 1 if this server's lease was still there. ``retire`` takes this
server out (a clean stop, ``shutdown``); ``reap`` takes out every server
whose lease ended (``disconnected``).
"""


class Link(enum.Enum):
    """Where this server's link to Redis stands; it changes in ``RedisBackplane._on`` only,
    along ``LINK_MOVES``."""

    CONNECTING = "connecting"  # made, the room not loaded yet
    READY = "ready"  # the room is shared; names are given out from ``names_free_at`` on
    LOST = "lost"  # a call failed: messages and names are refused until Redis answers again
    REGAINING = "regaining"  # the stream is read again, messages flow; no name is given out
    # until the lease thread has renewed (Redis may have restarted and lost the names)
    CLOSING = "closing"  # the server stops: the publisher sends what is queued, then retires
    STOPPED = "stopped"  # every thread ends


class LinkEvent(enum.Enum):
    """What happens to the link, as the threads see it."""

    ATTACHED = "attached"  # the room is loaded (``attach``)
    FAILED = "failed"  # a call to Redis failed, on any thread
    READ = "read"  # the reader read the stream
    RENEWED = "renewed"  # the lease thread renewed the lease after a loss
    CLOSE = "close"  # ``close`` began
    STOP = "stop"  # ``close`` sent what it could: the threads end


_OPEN = (Link.CONNECTING, Link.READY, Link.LOST, Link.REGAINING)
LINK_MOVES: dict[tuple[Link, LinkEvent], Link] = {
    (Link.CONNECTING, LinkEvent.ATTACHED): Link.READY,
    (Link.READY, LinkEvent.FAILED): Link.LOST,
    (Link.REGAINING, LinkEvent.FAILED): Link.LOST,
    (Link.LOST, LinkEvent.READ): Link.REGAINING,
    (Link.LOST, LinkEvent.RENEWED): Link.READY,
    (Link.REGAINING, LinkEvent.RENEWED): Link.READY,
    **{(state, LinkEvent.CLOSE): Link.CLOSING for state in _OPEN},
    (Link.CLOSING, LinkEvent.STOP): Link.STOPPED,
}
"""Every move of the link. An event not listed for a state leaves it as it is: a read or a
renewal while ``READY``, a failure while ``LOST``, or one while closing (everyone is being
told ``bye``: nobody is told the room cannot be reached)."""

UNREACHABLE = (Link.CONNECTING, Link.LOST)
"""States in which the room refuses what needs the shared order (``ready`` is False). Once
closing, the server is saying ``bye``: nobody is told the room cannot be reached."""
NO_NEW_NAMES = (Link.LOST, Link.REGAINING)
"""States in which no name is given out: Redis may have come back without them."""
FLOWING = (Link.READY, Link.REGAINING)
"""States in which a message held while the room is ``busy`` waits (``wait_while_busy``): its
events are on their way back. Lost, the room refuses it; closing, everyone is told ``bye``."""


class Wire:
    """One connection that one thread owns: a command packed, sent and its reply read, and
    nothing else. A connection lost is made again at the next call."""

    def __init__(self, client: redis.Redis) -> None:
        # redis-py's connection classes are not typed: Any, kept to this class.
        self._connection: Any = client.connection_pool.make_connection()

    def call(self, *args: Any) -> Any:
        """Send one command and return its reply; ``redis.RedisError`` if it failed."""
        connection = self._connection
        try:  # data before a command, or the end: a Redis gone since; connect again
            stale = connection.can_read(timeout=0)
        except (redis.ConnectionError, OSError):
            stale = True
        if stale:
            connection.disconnect()
        connection.send_packed_command(connection.pack_command(*args))
        return connection.read_response()

    def close(self) -> None:
        self._connection.disconnect()


class RedisBackplane:
    """The room's order in a Redis stream, its names in a hash, this server's lease."""

    def __init__(self, url: str, room: str, *, history: int, lease: float) -> None:
        """Connect and check Redis answers; ``StartError`` if it does not."""
        self.link = Link.CONNECTING
        self.server = secrets.token_hex(8)
        self._url = url
        self._lease = lease
        self._maxlen = max(history, MIN_STREAM)
        self._history = history
        prefix = f"chat:{{{room}}}:"
        self._log, self._names = prefix + "log", prefix + "names"
        self._servers, self._seen = prefix + "servers", prefix + "seen"
        self._epoch = prefix + "epoch"
        self._holds = itertools.count(1)  # numbers the holds of names this server takes
        self._holders: dict[str, str] = {}  # name key -> token of the member holding it here
        self._event_numbers = itertools.count(1)
        self._published = 0  # the number of the last event put in the outbox
        self._returned = 0  # the number of the last of our events read back from the stream
        self._outbox: deque[tuple[int, bytes, str, str]] = deque()
        # Our events on their way, by number: read back, each is the entry the room made (no
        # second decoding). Appended under _outbox_changed, taken by the reader alone.
        self._awaited: deque[tuple[int, Entry]] = deque()
        self._me = self.server.encode()
        self._outbox_changed = threading.Condition()
        # Set unless busy with the link FLOWING: what a held message waits on. Changed under
        # _outbox_changed only (``_settle``), where ``_published`` and the link are read.
        self._calm = threading.Event()
        self._calm.set()
        self._state_lock = threading.Lock()  # the link, and the names held here
        self._stopped = threading.Event()  # set as the link is STOPPED: every wait ends
        self._room: Room[Any] | None = None
        self._last_id = b"0-0"
        self._restart_hold = min(RESTART_HOLD, lease)
        self.names_free_at = 0.0  # monotonic: no new name is given out before it
        self._renew_now = threading.Event()
        self._connect(url)
        self._threads = [
            threading.Thread(target=self._run_publisher, name="redis-publisher", daemon=True),
            threading.Thread(target=self._run_reader, name="redis-reader", daemon=True),
            threading.Thread(target=self._run_lease, name="redis-lease", daemon=True),
        ]

    def _connect(self, url: str) -> None:
        """The client, its scripts, and a first lease: Redis answers, or ``StartError``."""
        try:
            self._redis = redis.Redis.from_url(
                url,
                socket_timeout=SOCKET_TIMEOUT,
                socket_connect_timeout=SOCKET_TIMEOUT,
                retry=Retry(NoBackoff(), 0),
                protocol=2,
            )
            self._claim_script = self._redis.register_script(CLAIM)
            self._publish_script = self._redis.register_script(PUBLISH)
            self._lease_script = self._redis.register_script(LEASE)
            self._epoch_script = self._redis.register_script(EPOCH)
            self._take_script = self._redis.register_script(TAKE)
            self._renew("renew")
        except (redis.RedisError, ValueError) as exc:
            raise StartError(f"cannot use Redis at {url}: {exc}") from None

    # ---- what the room calls -------------------------------------------

    def attach(self, room: Room[Any]) -> None:
        """Load the room's state from Redis, then start following the stream."""
        self._room = room
        count = max(self._history + 200, READ_AT_START)
        try:
            if (hold := self._hold()) > 0:
                log.info(
                    "Redis started just now: waiting %.1f s for servers to claim their names back",
                    hold,
                )
                time.sleep(hold)
            epoch = self._epoch_script(keys=[self._log, self._epoch], args=[new_epoch()]).decode()
            with self._redis.pipeline(transaction=True) as pipe:
                pipe.xrevrange(self._log, count=count)
                pipe.hgetall(self._names)
                pipe.xinfo_stream(self._log)
                entries, names, info = pipe.execute()
        except redis.RedisError as exc:
            raise StartError(f"cannot read the room from Redis at {self._url}: {exc}") from None
        earlier, floor = self._earlier(entries, info, count)
        if entries:
            self._last_id = entries[0][0]
        room.preload(
            earlier[::-1],
            [held.decode().split(" ", 1)[1] for held in names.values()],
            epoch=epoch,
            floor=floor,
            newest=entries[0][0].decode() if entries else None,
        )
        self._on(LinkEvent.ATTACHED)
        log.info("sharing the room through Redis at %s as server %s", self._url, self.server)
        for thread in self._threads:
            thread.start()

    def _earlier(
        self, entries: list[tuple[bytes, dict[bytes, bytes]]], info: dict[str, Any], count: int
    ) -> tuple[list[Msg], str | None]:
        """The messages the room keeps (newest first) of the stream's newest ``entries``, and
        the floor: the newest msg not among them, if some may be gone."""
        earlier: list[Msg] = []
        floor: str | None = None  # the newest msg not read back
        for entry_id, fields in entries:
            if b"f" not in fields:  # a takeover: it says nothing to anyone
                continue
            message = decode_server(fields[b"f"]).message
            if not isinstance(message, Msg):
                continue
            if len(earlier) < self._history:
                earlier.append(dataclasses.replace(message, id=entry_id.decode()))
            elif floor is None:
                floor = entry_id.decode()
        trimmed = info.get("max-deleted-entry-id", b"0-0") not in (b"0-0", "0-0")
        if floor is None and entries and (len(entries) == count or trimmed):
            floor = entries[-1][0].decode()  # what came before what was read may be gone
        return earlier, floor

    def _hold(self) -> float:
        """Seconds until Redis has been up ``restart_hold``: no new name is given out before."""
        uptime = int(self._redis.info("server")["uptime_in_seconds"])
        hold = max(0.0, self._restart_hold - uptime)
        self.names_free_at = time.monotonic() + hold
        return hold

    @property
    def ready(self) -> bool:
        """False while the shared order cannot be reached: the room refuses what needs it."""
        return self.link not in UNREACHABLE

    def _on(self, event: LinkEvent) -> tuple[Link, Link]:
        """The one place the link changes (``LINK_MOVES``): the state before and after."""
        with self._state_lock:
            before = self.link
            self.link = after = LINK_MOVES.get((before, event), before)
        if after is Link.STOPPED:
            self._stopped.set()
            self._renew_now.set()
        with self._outbox_changed:
            self._settle()  # lost or closing: a held message waits no more
            if after in (Link.CLOSING, Link.STOPPED):
                self._outbox_changed.notify()
        return before, after

    def _settle(self) -> None:
        """``_calm`` as it is to be now (``_outbox_changed`` held): cleared while busy with the
        link FLOWING, else set. Every change that may make it busy (a publish) or move the
        link settles it under that lock, so none is missed; a read only makes it less busy."""
        held = self.busy and self.link in FLOWING
        if held == self._calm.is_set():
            if held:
                self._calm.clear()
            else:
                self._calm.set()

    def claim(self, name: str, old: str | None) -> bool:
        return self.claim_session(name, old, "")

    def claim_session(self, name: str, old: str | None, session: str) -> bool:
        key = name_key(name)
        old_key = "" if old is None else name_key(old)
        token = self._holders.get(old_key) or f"{self.server}:{next(self._holds)}/{session}"
        if self.link in NO_NEW_NAMES or time.monotonic() < self.names_free_at:
            raise Unavailable(
                "the room is getting its names back after a restart; try again in a moment"
            )
        won = self._ask(self._claim_script, [self._names], [key, token, name, self.server, old_key])
        if won:
            with self._state_lock:
                self._holders.pop(old_key, None)
                self._holders[key] = token
        return bool(won)

    def take_over(self, name: str, session: str) -> bool:
        key = name_key(name)
        token = f"{self.server}:{next(self._holds)}/{session}"
        won = self._ask(
            self._take_script,
            [self._names, self._log],
            [key, session, token, name, self.server, self._maxlen],
        )
        if won:
            with self._state_lock:
                self._holders[key] = token
        return bool(won)

    def _ask(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run one of the name scripts for a hello or nick; Redis away is ``Unavailable``."""
        try:
            return script(keys=keys, args=args)
        except redis.RedisError as exc:
            self._lost(exc)
            raise Unavailable(
                "the room cannot be reached just now; try again in a moment"
            ) from None

    @property
    def busy(self) -> bool:
        return self._published - self._returned > MAX_IN_FLIGHT

    def wait_while_busy(self) -> None:
        self._calm.wait()

    def publish(self, entry: Entry) -> None:
        release, token = "", ""
        if isinstance(entry.message, Left):
            release = name_key(entry.message.name)
            with self._state_lock:
                token = self._holders.pop(release, "")
        with self._outbox_changed:
            self._published = next(self._event_numbers)
            self._outbox.append((self._published, entry.line[:-1], release, token))
            self._awaited.append((self._published, entry))
            self._settle()
            self._outbox_changed.notify()

    def close(self) -> None:
        """Send what is queued, say ``left`` (``shutdown``) for our users, stop the threads."""
        self._on(LinkEvent.CLOSE)
        self._threads[0].join(CLOSE_WAIT)
        self._on(LinkEvent.STOP)
        for thread in self._threads:
            thread.join(CLOSE_WAIT)

    # ---- the threads ----------------------------------------------------

    def _run_publisher(self) -> None:
        """Send the outbox in order, a batch a call; keep it while Redis is away."""
        wire = Wire(self._redis)
        try:
            self._publish_all(wire)
        finally:
            wire.close()

    def _send_batch(self, wire: Wire, batch: list[tuple[int, bytes, str, str]]) -> None:
        keys = (self._log, self._seen, self._names)
        parts = [part for event in batch for part in event]
        try:
            wire.call(
                "EVALSHA", self._publish_script.sha, 3, *keys, self.server, self._maxlen, *parts
            )
        except redis.exceptions.NoScriptError:  # a Redis that restarted: it has no scripts
            wire.call("EVAL", PUBLISH, 3, *keys, self.server, self._maxlen, *parts)

    def _publish_all(self, wire: Wire) -> None:
        while True:
            with self._outbox_changed:
                while not self._outbox and self.link in _OPEN:
                    self._outbox_changed.wait()
                if self.link is Link.STOPPED:
                    return
                batch = list(itertools.islice(self._outbox, PUBLISH_BATCH))
            began = time.monotonic()
            try:
                if batch:
                    self._send_batch(wire, batch)
                else:  # closing, and all is sent
                    self._renew("retire")
                    return
            except redis.RedisError as exc:
                self._lost(exc)
                self._stopped.wait(RETRY_SECONDS)
                continue
            with self._outbox_changed:
                for _ in batch:
                    self._outbox.popleft()
            if (rest := began + PUBLISH_REST - time.monotonic()) > 0:
                time.sleep(rest)  # what is published meanwhile goes in the next call

    def _run_reader(self) -> None:
        """Follow the stream from the last entry read; hand each batch to the room in order."""
        wire = Wire(self._redis)
        try:
            self._follow(wire)
        finally:
            wire.close()

    def _follow(self, wire: Wire) -> None:
        assert self._room is not None
        last = 0.0  # when the last read that brought entries ended
        while not self._stopped.is_set():
            if (rest := last + READ_REST - time.monotonic()) > 0:
                time.sleep(rest)  # what is added meanwhile comes in this read
            try:
                found = cast(
                    StreamRead | None,
                    wire.call(
                        "XREAD", "COUNT", READ_COUNT, "BLOCK", READ_BLOCK_MS,
                        "STREAMS", self._log, self._last_id,
                    ),
                )  # fmt: skip
            except redis.RedisError as exc:
                self._lost(exc)
                self._stopped.wait(RETRY_SECONDS)
                continue
            self._back(LinkEvent.READ)
            if found:
                last = time.monotonic()
            for _, entries in found or ():
                batch: list[tuple[Entry, bool]] = []
                for entry_id, flat in entries:
                    self._last_id = entry_id
                    fields: dict[bytes, bytes] = dict(zip(flat[::2], flat[1::2], strict=True))
                    if b"t" in fields:  # a takeover: the room meets it in its place
                        self._room.receive(batch)
                        batch = []
                        self._taken_over(fields)
                        continue
                    try:
                        batch.append(self._entry(entry_id, fields))
                    except (ProtocolError, KeyError) as exc:
                        log.warning("skipped a stream entry that is not a frame: %s", exc)
                self._room.receive(batch)
            if not self._calm.is_set():  # our events came back: held messages may go on
                with self._outbox_changed:
                    self._settle()

    def _entry(self, entry_id: bytes, fields: dict[bytes, bytes]) -> tuple[Entry, bool]:
        """A stream entry as the room's: one of ours that it still holds is taken back as
        it was encoded; any other is decoded. A room frame's id is the entry's."""
        mine = fields[b"s"] == self._me
        entry: Entry | None = None
        if mine and (number := fields.get(b"n")) is not None:
            self._returned = int(number)
            awaited = self._awaited
            while awaited and awaited[0][0] < self._returned:  # sent again, dropped as seen
                awaited.popleft()
            if awaited and awaited[0][0] == self._returned:
                entry = awaited.popleft()[1]
        if entry is None:
            frame = fields[b"f"]
            message = decode_server(frame).message
            # Redis itself writes the left of a server that is gone: encode it like ours.
            entry = (
                Entry.of(message) if isinstance(message, Left) else Entry(message, frame + b"\n")
            )
        if isinstance(entry.message, (Msg, Joined, Left, Renamed)):
            entry = entry.stamped(entry_id.decode())
        return entry, mine

    def _taken_over(self, fields: dict[bytes, bytes]) -> None:
        key, mine = fields[b"t"].decode(), fields[b"s"].decode() == self.server
        if not mine:  # the name is another server's now: nothing of ours to release
            with self._state_lock:
                self._holders.pop(key, None)
        assert self._room is not None
        self._room.taken_over(key, mine=mine)

    def _run_lease(self) -> None:
        """Renew the lease; take out servers whose lease ended, from ``reap_from`` on: one
        lease after this server (re)connected, so that the others have had time to renew.

        Woken at once when Redis is back (``_back``), so that a server whose lease Redis
        lost claims its names back before anyone else may take them.
        """
        reap_from = time.monotonic() + self._lease
        while not self._stopped.is_set():
            self._renew_now.wait(self._lease / 4)
            self._renew_now.clear()
            if self._stopped.is_set():
                return
            regaining = self.link in NO_NEW_NAMES  # Redis was away: it may be a new one
            reap = not regaining and time.monotonic() >= reap_from
            try:
                alive = self._renew("reap" if reap else "renew")
                if not alive:
                    log.warning("this server's lease had ended: the others took its users out")
                    self._rejoin()
                if regaining:
                    self._hold()
            except redis.RedisError as exc:
                self._lost(exc)
                continue
            if regaining:
                reap_from = time.monotonic() + self._lease
                self._back(LinkEvent.RENEWED)

    def _renew(self, mode: str) -> bool:
        alive = self._lease_script(
            keys=[self._servers, self._names, self._log, self._seen],
            args=[self.server, int(self._lease * 1000), mode, self._maxlen],
        )
        return bool(alive)

    def _rejoin(self) -> None:
        """Our users were taken out while we could not renew: claim their names back, all in
        one pipeline (no new name is given out meanwhile), and say joined."""
        assert self._room is not None
        names = self._room.local_names()
        with self._redis.pipeline(transaction=False) as pipe:
            for name in names:
                key = name_key(name)
                with self._state_lock:
                    token = self._holders.setdefault(key, f"{self.server}:{next(self._holds)}")
                self._claim_script(
                    keys=[self._names], args=[key, token, name, self.server, ""], client=pipe
                )
            won = pipe.execute()
        for name, ok in zip(names, won, strict=True):
            if ok:
                self.publish(Entry.of(Joined(name=name, ts=wall_clock_ms())))
            else:  # the room ends its session when the winner's joined comes
                with self._state_lock:
                    self._holders.pop(name_key(name), None)
                log.warning("%s's name was taken while this server was away", name)
        log.warning("claimed %d name(s) again", len(names))

    # ---- Redis away and back ----------------------------------------------

    def _lost(self, exc: Exception) -> None:
        """A call failed: everyone is told once, when the link goes from shared to ``LOST``."""
        before, after = self._on(LinkEvent.FAILED)
        if after is not Link.LOST or before is Link.LOST:
            return
        log.warning("lost Redis (%s): messages are refused until it is back", exc)
        assert self._room is not None
        self._room.tell_everyone(
            Error(
                code=Unavailable.code,
                text="the room cannot be reached just now: messages are refused until it is back",
            )
        )

    def _back(self, event: LinkEvent) -> None:
        """Redis answered the reader (``READ``) or the lease thread (``RENEWED``)."""
        before, _ = self._on(event)
        if before is Link.LOST:
            if event is LinkEvent.READ:  # the lease thread renews at once
                self._renew_now.set()
            log.warning("Redis is back: the room is shared again")
