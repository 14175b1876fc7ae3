#!/usr/bin/env python3
"""Drive one or more matrix-nio clients through a scripted scenario and report JSON results.

    nio_client.py HOMESERVER_URL                 steps on stdin, one JSON object per line
    nio_client.py HOMESERVER_URL --steps JSON    steps as one JSON array

For every step one JSON object is written to stdout on its own line (and flushed) as soon as the
step ends, so a caller can interleave its own actions between steps. The process ends at
end-of-file on stdin (or after the last --steps entry), closing every client.

Step fields common to every operation:
  op         operation name (below)
  client     which client session to use (default "default"); a session starts at login/restore
  id         optional label; the step's result can be referenced by later steps as ${id.field}
  timeout_s  bound on the step (default 30 s); on expiry the step fails with error "timeout"
Any string value of the form "${label.a.b}" is replaced by that field of an earlier result
(labels are ids or step indexes, 0-based); inside a longer string the value is inserted as text.

Every result has: op, client, index, ok (bool), ms (elapsed); on failure also error and
status_code (when the server answered). Operations and their extra result fields:
  login        user, password, [url, device_id, device_name, request_timeout_s]
                                                                   -> user_id, device_id, access_token
  restore      user_id, access_token, [device_id, url, request_timeout_s]  -> user_id
               (login/restore start the client's session; url defaults to the command line's,
               request_timeout_s (default 30) bounds each HTTP request of that client: raise
               it, and the steps' timeout_s, for slow links)
  whoami                                                           -> user_id, device_id
  create_room  [name, topic, invite[], preset, is_direct, room_version, visibility, federate]
                                                                   -> room_id
  invite       room_id, user_id
  join         room_id (id or alias)                               -> room_id
  leave        room_id
  send         room_id, body | content, [type, msgtype, txn_id]    -> event_id
  sync         [since (token; "" = initial sync), timeout_ms (default 0), full_state, filter,
                set_presence]                                      -> next_batch, rooms, presence
               rooms = {join: {room_id: {timeline, state, ephemeral, account_data}},
                        invite: {room_id: [stripped state]}, leave: [room_id]}
               (events are the raw event JSON as the server sent it)
  wait_event   [room_id, body, type, sender, event_id]  sync (1 s long polls) until a timeline
               event matching every given field has been seen (events seen by earlier syncs of
               this client count too)                              -> room_id, event, syncs
  wait_invite  [room_id]  sync until an invite (to that room) shows up -> room_id, syncs
  wait_ephemeral room_id, type ("m.typing"/"m.receipt"), [user_id]  sync until such an ephemeral
               event (mentioning user_id, when given) arrives     -> event, syncs
  typing       room_id, [typing (default true), timeout_ms (default 30000)]
  receipt      room_id, event_id, [receipt_type (default "m.read"), thread_id (default "main";
               null for an unthreaded receipt)]
  read_markers room_id, fully_read, [read, private_read]
  room_messages room_id, [start, end, direction ("b"/"f"), limit (default 10)]
                                                                   -> chunk, start, end
  upload       text | data_b64, [content_type, filename]           -> content_uri
  download     mxc, [filename]            -> content_type, len, sha256, data_b64, text (if UTF-8)
  logout       [all_devices]
  sleep        seconds
"""
import asyncio
import base64
import dataclasses
import hashlib
import io
import json
import re
import sys
import time

import nio

DEFAULT_TIMEOUT_S = 30.0


class StepError(Exception):
    def __init__(self, message, status_code=None):
        super().__init__(message)
        self.status_code = status_code


def check(resp, what):
    if isinstance(resp, nio.responses.ErrorResponse):
        raise StepError(f"{what}: {resp.message}", getattr(resp, "status_code", None))
    return resp


def to_json(obj):
    """Raw event JSON where nio kept it, else a plain-data rendering of nio's object."""
    source = getattr(obj, "source", None)
    if isinstance(source, dict) and source:
        return source
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = {"nio_type": type(obj).__name__}
        for f in dataclasses.fields(obj):
            out[f.name] = to_json(getattr(obj, f.name))
        return out
    if isinstance(obj, (list, tuple)):
        return [to_json(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_json(v) for k, v in obj.items()}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)


def matches(event, want):
    content = event.get("content") or {}
    for key in ("type", "sender", "event_id"):
        if want.get(key) is not None and event.get(key) != want[key]:
            return False
    if want.get("body") is not None and content.get("body") != want["body"]:
        return False
    return True


class Session:
    """One nio AsyncClient plus every timeline event it has seen, by room."""

    def __init__(self, url, request_timeout_s=DEFAULT_TIMEOUT_S):
        cfg = nio.AsyncClientConfig(
            store_sync_tokens=False,
            encryption_enabled=False,
            request_timeout=request_timeout_s,
            max_timeouts=1,
        )
        self.client = nio.AsyncClient(url, config=cfg)
        self.seen = {}  # room_id -> [event json]
        self.invites = {}  # room_id -> [stripped state json]
        self.ephemeral = {}  # room_id -> [ephemeral json]

    async def sync(self, **kw):
        resp = check(await self.client.sync(**kw), "sync")
        rooms = {"join": {}, "invite": {}, "leave": []}
        for rid, info in resp.rooms.join.items():
            timeline = [to_json(e) for e in info.timeline.events]
            ephemeral = [to_json(e) for e in info.ephemeral]
            self.seen.setdefault(rid, []).extend(timeline)
            self.ephemeral.setdefault(rid, []).extend(ephemeral)
            rooms["join"][rid] = {
                "timeline": timeline,
                "limited": info.timeline.limited,
                "prev_batch": info.timeline.prev_batch,
                "state": [to_json(e) for e in info.state],
                "ephemeral": ephemeral,
                "account_data": [to_json(e) for e in info.account_data],
            }
        for rid, info in resp.rooms.invite.items():
            state = [to_json(e) for e in info.invite_state]
            self.invites[rid] = state
            rooms["invite"][rid] = state
        rooms["leave"] = sorted(resp.rooms.leave.keys())
        return {
            "next_batch": resp.next_batch,
            "rooms": rooms,
            "presence": [to_json(e) for e in resp.presence_events],
        }


class Driver:
    def __init__(self, url):
        self.url = url
        self.sessions = {}
        self.results = []  # by index
        self.labels = {}

    # ---- substitution of ${label.field} references ------------------------------------------
    REF = re.compile(r"\$\{([^}]+)\}")

    def lookup(self, path):
        head, *rest = path.split(".")
        if head in self.labels:
            value = self.labels[head]
        elif head.isdigit() and int(head) < len(self.results):
            value = self.results[int(head)]
        else:
            raise StepError(f"unknown reference ${{{path}}}")
        for part in rest:
            if isinstance(value, list) and part.isdigit():
                value = value[int(part)]
            elif isinstance(value, dict) and part in value:
                value = value[part]
            else:
                raise StepError(f"reference ${{{path}}}: no field {part!r}")
        return value

    def subst(self, value):
        if isinstance(value, str):
            whole = self.REF.fullmatch(value)
            if whole:
                return self.lookup(whole.group(1))
            return self.REF.sub(lambda m: str(self.lookup(m.group(1))), value)
        if isinstance(value, list):
            return [self.subst(v) for v in value]
        if isinstance(value, dict):
            return {k: self.subst(v) for k, v in value.items()}
        return value

    # ---- running steps ----------------------------------------------------------------------
    async def run_step(self, raw):
        index = len(self.results)
        t0 = time.monotonic()
        result = {"op": raw.get("op") if isinstance(raw, dict) else None, "index": index}
        try:
            if not isinstance(raw, dict) or not isinstance(raw.get("op"), str):
                raise StepError("a step is a JSON object with a string field 'op'")
            step = self.subst(raw)
            result["client"] = step.get("client", "default")
            timeout = float(step.get("timeout_s", DEFAULT_TIMEOUT_S))
            fields = await asyncio.wait_for(self.dispatch(step), timeout)
            result.update(fields or {})
            result["ok"] = True
        except asyncio.TimeoutError:
            result.update(ok=False, error="timeout")
        except StepError as e:
            result.update(ok=False, error=str(e))
            if e.status_code is not None:
                result["status_code"] = e.status_code
        except Exception as e:  # report, keep going: the caller decides what is fatal
            result.update(ok=False, error=f"{type(e).__name__}: {e}")
        result["ms"] = round((time.monotonic() - t0) * 1000, 1)
        self.results.append(result)
        if isinstance(raw, dict) and isinstance(raw.get("id"), str):
            self.labels[raw["id"]] = result
        return result

    def session(self, step, create=False):
        name = step.get("client", "default")
        if create:
            old = self.sessions.get(name)
            if old is None or step.get("url") not in (None, old.client.homeserver):
                self.sessions[name] = Session(
                    step.get("url", self.url),
                    float(step.get("request_timeout_s", DEFAULT_TIMEOUT_S)),
                )
        if name not in self.sessions:
            raise StepError(f"client {name!r} has not logged in")
        return self.sessions[name]

    async def dispatch(self, s):
        op = s["op"]
        handler = getattr(self, "op_" + op, None)
        if handler is None:
            raise StepError(f"unknown op {op!r}")
        return await handler(s)

    async def close(self):
        for sess in self.sessions.values():
            try:
                await sess.client.close()
            except Exception:
                pass

    # ---- operations -------------------------------------------------------------------------
    async def op_login(self, s):
        sess = self.session(s, create=True)
        c = sess.client
        c.user = s["user"]
        if s.get("device_id"):
            c.device_id = s["device_id"]
        r = check(await c.login(s["password"], device_name=s.get("device_name", "")), "login")
        return {"user_id": r.user_id, "device_id": r.device_id, "access_token": r.access_token}

    async def op_restore(self, s):
        sess = self.session(s, create=True)
        sess.client.restore_login(s["user_id"], s.get("device_id") or "", s["access_token"])
        return {"user_id": s["user_id"]}

    async def op_whoami(self, s):
        r = check(await self.session(s).client.whoami(), "whoami")
        return {"user_id": r.user_id, "device_id": r.device_id}

    async def op_create_room(self, s):
        kw = {}
        for key in ("name", "topic", "room_version", "is_direct", "federate"):
            if key in s:
                kw[key] = s[key]
        if "invite" in s:
            kw["invite"] = list(s["invite"])
        if "preset" in s:
            kw["preset"] = nio.RoomPreset(s["preset"])
        if "visibility" in s:
            kw["visibility"] = nio.RoomVisibility(s["visibility"])
        r = check(await self.session(s).client.room_create(**kw), "create_room")
        return {"room_id": r.room_id}

    async def op_invite(self, s):
        check(await self.session(s).client.room_invite(s["room_id"], s["user_id"]), "invite")
        return {}

    async def op_join(self, s):
        r = check(await self.session(s).client.join(s["room_id"]), "join")
        return {"room_id": r.room_id}

    async def op_leave(self, s):
        check(await self.session(s).client.room_leave(s["room_id"]), "leave")
        return {}

    async def op_send(self, s):
        content = s.get("content")
        if content is None:
            content = {"msgtype": s.get("msgtype", "m.text"), "body": s["body"]}
        r = check(
            await self.session(s).client.room_send(
                s["room_id"], s.get("type", "m.room.message"), content, tx_id=s.get("txn_id")
            ),
            "send",
        )
        return {"event_id": r.event_id}

    async def op_sync(self, s):
        sess = self.session(s)
        kw = {"timeout": int(s.get("timeout_ms", 0))}
        if "since" in s:
            if s["since"] in ("", None):
                sess.client.next_batch = None  # initial sync
                sess.client.loaded_sync_token = None
            else:
                kw["since"] = s["since"]
        for key in ("full_state", "set_presence"):
            if key in s:
                kw[key] = s[key]
        if "filter" in s:
            kw["sync_filter"] = s["filter"]
        return await sess.sync(**kw)

    async def sync_until(self, sess, found):
        syncs = 0
        while True:
            hit = found()
            if hit is not None:
                return hit, syncs
            await sess.sync(timeout=1000)
            syncs += 1

    async def op_wait_event(self, s):
        sess = self.session(s)
        want = {k: s.get(k) for k in ("type", "sender", "event_id", "body")}
        room = s.get("room_id")

        def found():
            for rid, events in sess.seen.items():
                if room is not None and rid != room:
                    continue
                for ev in events:
                    if matches(ev, want):
                        return rid, ev
            return None

        (rid, ev), syncs = await self.sync_until(sess, found)
        return {"room_id": rid, "event": ev, "syncs": syncs}

    async def op_wait_invite(self, s):
        sess = self.session(s)
        room = s.get("room_id")

        def found():
            for rid in sess.invites:
                if room is None or rid == room:
                    return rid
            return None

        rid, syncs = await self.sync_until(sess, found)
        return {"room_id": rid, "invite_state": sess.invites[rid], "syncs": syncs}

    async def op_wait_ephemeral(self, s):
        sess = self.session(s)
        room, etype, user = s["room_id"], s["type"], s.get("user_id")
        nio_type = {"m.typing": "TypingNoticeEvent", "m.receipt": "ReceiptEvent"}.get(etype, etype)

        def found():
            for ev in sess.ephemeral.get(room, []):
                if ev.get("type", ev.get("nio_type")) not in (etype, nio_type):
                    continue
                if user is None or user in json.dumps(ev):
                    return ev
            return None

        ev, syncs = await self.sync_until(sess, found)
        return {"event": ev, "syncs": syncs}

    async def op_typing(self, s):
        check(
            await self.session(s).client.room_typing(
                s["room_id"], bool(s.get("typing", True)), int(s.get("timeout_ms", 30000))
            ),
            "typing",
        )
        return {}

    async def op_receipt(self, s):
        check(
            await self.session(s).client.update_receipt_marker(
                s["room_id"], s["event_id"], nio.ReceiptType(s.get("receipt_type", "m.read")),
                thread_id=s.get("thread_id", "main"),
            ),
            "receipt",
        )
        return {}

    async def op_read_markers(self, s):
        check(
            await self.session(s).client.room_read_markers(
                s["room_id"], s["fully_read"], s.get("read"), s.get("private_read")
            ),
            "read_markers",
        )
        return {}

    async def op_room_messages(self, s):
        direction = nio.MessageDirection.front if s.get("direction") == "f" else nio.MessageDirection.back
        r = check(
            await self.session(s).client.room_messages(
                s["room_id"], start=s.get("start"), end=s.get("end"), direction=direction,
                limit=int(s.get("limit", 10)),
            ),
            "room_messages",
        )
        return {"chunk": [to_json(e) for e in r.chunk], "start": r.start, "end": r.end}

    async def op_upload(self, s):
        if "data_b64" in s:
            data = base64.b64decode(s["data_b64"])
        else:
            data = s["text"].encode()
        r, _ = await self.session(s).client.upload(
            io.BytesIO(data), content_type=s.get("content_type", "application/octet-stream"),
            filename=s.get("filename"), filesize=len(data),
        )
        check(r, "upload")
        return {"content_uri": r.content_uri, "len": len(data)}

    async def op_download(self, s):
        r = check(
            await self.session(s).client.download(mxc=s["mxc"], filename=s.get("filename")),
            "download",
        )
        body = r.body if isinstance(r.body, (bytes, bytearray)) else bytes(r.body)
        out = {
            "content_type": r.content_type,
            "filename": r.filename,
            "len": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "data_b64": base64.b64encode(body).decode(),
        }
        try:
            out["text"] = body.decode("utf-8")
        except UnicodeDecodeError:
            pass
        return out

    async def op_logout(self, s):
        check(await self.session(s).client.logout(bool(s.get("all_devices", False))), "logout")
        return {}

    async def op_sleep(self, s):
        await asyncio.sleep(float(s["seconds"]))
        return {}


def emit(result):
    sys.stdout.write(json.dumps(result, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def main(argv):
    if len(argv) not in (2, 4) or (len(argv) == 4 and argv[2] != "--steps"):
        sys.exit(__doc__)
    driver = Driver(argv[1].rstrip("/"))
    try:
        if len(argv) == 4:
            for step in json.loads(argv[3]):
                emit(await driver.run_step(step))
            return
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if not line.strip():
                continue
            try:
                step = json.loads(line)
            except json.JSONDecodeError as e:
                step = {"op": None, "bad_json": str(e)}
            emit(await driver.run_step(step))
    finally:
        await driver.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv))
