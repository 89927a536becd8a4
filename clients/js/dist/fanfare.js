// fanfare's client for browsers and Node.js (>= 20), and a small helper for backends.
//
// The client keeps one WebSocket to a fanfare server and makes the server's guarantees hold on
// the application's side (docs/PROTOCOL.md sections 3, 7 and 8):
// - it reconnects after any break, with capped, jittered exponential backoff, and subscribes
//   again to every channel, each from the last offset it delivered (and the user's direct
//   messages from theirs), so nothing is missed across a reconnect;
// - it delivers each message once (a repeat at a seam is dropped by offset);
// - a gap the server cannot fill is an explicit `lost` event: the application reloads;
// - it notices a dead connection (a ping the server does not answer in time) and reconnects;
// - it refreshes its token when the server says it is expiring, and asks for a new one when
//   the server refuses an expired one;
// - with `deltas`, it rebuilds channel messages sent as fossil deltas (section 10) and checks
//   each; one that does not apply makes it subscribe again from its offset, never show a wrong
//   message.
//
// - with `transports: ["websocket", "sse"]`, a WebSocket that cannot connect (a proxy that
//   breaks them) is followed by a Server-Sent Events stream (section 12) carrying the same
//   events, resumed from the same positions.
//
// No runtime dependency: it uses the platform's WebSocket and EventSource (or the ones given).
/** A connection that lasted this long resets the backoff; shorter ones count as failures, so a
 * server that accepts and drops at once is not hammered. */
const STABLE_MS = 5_000;
// Close codes (docs/PROTOCOL.md).
const NORMAL = 1000;
const SLOW_CONSUMER = 1008;
const TOKEN_EXPIRED = 4001;
const DISCONNECTED_BY_BACKEND = 4003;
const SERVICE_RESTART = 1012;
/** Ours: the connection stopped answering pings. */
const DEAD = 4000;
export class FanfareClient {
    options;
    getToken;
    /** A `getToken` was given: an expired token can be replaced. */
    refreshable;
    WebSocketImpl;
    EventSourceImpl;
    /** Which of `options.transports` the next attempt uses. */
    transportAt = 0;
    listeners = new Map();
    /** Wanted channels, each with where the application is in it. */
    channels = new Map();
    /** Unsubscribes sent and not yet answered, per channel: their `unsubscribed` must not end
     * a subscription made again since. */
    unsubscribing = new Map();
    direct = {};
    /** Numbers connection attempts: an attempt overtaken (by `close()`, a newer one) stops. */
    attempt = 0;
    link;
    current = "disconnected";
    /** Failed attempts in a row (reset once a connection opens). */
    attempts = 0;
    reconnectTimer;
    pingTimer;
    pongDeadline;
    openDeadline;
    /** When the current connection opened. */
    openedAt;
    stopped = true;
    constructor(options) {
        const token = options.token;
        if (!options.getToken && token === undefined) {
            throw new Error("fanfare: give a token or getToken");
        }
        this.getToken = options.getToken ?? (() => token);
        this.refreshable = options.getToken !== undefined;
        const transports = options.transports ?? ["websocket"];
        const Impl = options.WebSocket ?? globalThis.WebSocket;
        if (!Impl && transports.includes("websocket")) {
            throw new Error("fanfare: no WebSocket here; pass one as options.WebSocket");
        }
        this.WebSocketImpl = Impl;
        this.EventSourceImpl = options.EventSource ?? globalThis.EventSource;
        if (!this.EventSourceImpl && transports.includes("sse")) {
            throw new Error("fanfare: no EventSource here; pass one as options.EventSource");
        }
        if (transports.length === 0)
            throw new Error("fanfare: no transport");
        this.options = {
            url: options.url,
            minReconnectDelay: options.minReconnectDelay ?? 250,
            maxReconnectDelay: options.maxReconnectDelay ?? 10_000,
            pingInterval: options.pingInterval ?? 20_000,
            pingTimeout: options.pingTimeout ?? 10_000,
            connectTimeout: options.connectTimeout ?? 10_000,
            restartReconnectDelay: options.restartReconnectDelay ?? 5_000,
            deltas: options.deltas ?? false,
            transports,
        };
        for (const channel of options.channels ?? []) {
            this.channels.set(channel, {});
        }
    }
    /** Listens to an event; returns a function that stops listening. */
    on(event, listener) {
        let set = this.listeners.get(event);
        if (!set)
            this.listeners.set(event, (set = new Set()));
        const stored = listener;
        set.add(stored);
        return () => set.delete(stored);
    }
    get state() {
        return this.current;
    }
    /** What carries the connection now (undefined while not connected). */
    get transport() {
        return this.current === "connected" ? this.link?.transport : undefined;
    }
    /** Connects, and keeps connecting until `close()`. */
    connect() {
        if (!this.stopped)
            return;
        this.stopped = false;
        void this.open();
    }
    /** Closes for good (no reconnect). */
    close() {
        this.stopped = true;
        this.attempt += 1;
        clearTimeout(this.reconnectTimer);
        clearTimeout(this.openDeadline);
        this.stopTimers();
        const link = this.link;
        this.link = undefined;
        link?.close(NORMAL);
        this.setState("closed");
    }
    /** Subscribes to a channel, now if connected and after every reconnect. */
    subscribe(channel) {
        if (this.channels.has(channel))
            return;
        this.channels.set(channel, {});
        if (this.onStream())
            return this.reopen();
        this.send(this.subscribeFrame(channel, {}));
    }
    unsubscribe(channel) {
        if (!this.channels.delete(channel))
            return;
        if (this.onStream()) {
            this.reopen();
            this.emit("unsubscribed", { channel });
            return;
        }
        if (this.send({ type: "unsubscribe", channel })) {
            this.unsubscribing.set(channel, (this.unsubscribing.get(channel) ?? 0) + 1);
        }
    }
    /** Where each topic stands for the application (a copy). */
    positions() {
        const copy = ({ offset, epoch }) => ({ offset, epoch });
        const channels = [...this.channels].map(([c, at]) => [c, copy(at)]);
        return { direct: copy(this.direct), channels: Object.fromEntries(channels) };
    }
    async open() {
        if (this.stopped)
            return;
        const attempt = ++this.attempt;
        this.setState("connecting");
        let token;
        try {
            // A getToken that never settles must not stall the client.
            token = await withTimeout(Promise.resolve(this.getToken()), this.options.connectTimeout);
        }
        catch (e) {
            if (attempt !== this.attempt)
                return;
            this.emit("error", { code: "token", detail: `getToken failed: ${String(e)}` });
            this.scheduleReconnect();
            return;
        }
        if (this.stopped || attempt !== this.attempt)
            return;
        const transports = this.options.transports;
        const transport = transports[this.transportAt % transports.length];
        const link = transport === "sse" ? this.openStream(token) : this.openSocket(token);
        this.link = link;
        this.openedAt = undefined;
        // A handshake that never ends (a lost SYN; some WebSocket implementations also never say
        // when the server hangs up during it) is given up.
        this.openDeadline = setTimeout(() => this.abandon(link, 1006, "connect timeout"), this.options.connectTimeout);
    }
    /** A WebSocket to `/ws`, resuming the direct messages in its URL and each channel by a
     * `subscribe` once open. */
    openSocket(token) {
        const url = new URL(this.options.url);
        url.searchParams.set("token", token);
        if (this.direct.offset !== undefined && this.direct.epoch !== undefined) {
            url.searchParams.set("since", String(this.direct.offset));
            url.searchParams.set("epoch", this.direct.epoch);
        }
        const ws = new this.WebSocketImpl(url.toString());
        const link = {
            transport: "websocket",
            send: (text) => {
                if (ws.readyState !== 1)
                    return false;
                ws.send(text);
                return true;
            },
            close: (code) => {
                ws.onopen = ws.onmessage = ws.onclose = null;
                try {
                    ws.close(code >= 3000 && code < 5000 ? code : NORMAL);
                }
                catch {
                    // Already closing.
                }
            },
        };
        ws.onopen = () => this.opened(link);
        ws.onmessage = (e) => {
            if (typeof e.data === "string")
                this.received(link, e.data);
        };
        ws.onclose = (e) => this.abandon(link, e.code, e.reason);
        // An error is always followed by a close, which decides what happens next.
        ws.onerror = () => { };
        return link;
    }
    /** A stream of Server-Sent Events from `/sse` (beside `/ws` on the same server), its
     * channels in the URL and every topic resuming from the positions it carries. The client
     * does its own reconnecting: the EventSource's is stopped at the first error. */
    openStream(token) {
        const url = new URL(this.options.url);
        url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
        url.pathname = url.pathname.replace(/\/ws$/, "") + "/sse";
        url.search = "";
        url.searchParams.set("token", token);
        for (const channel of this.channels.keys())
            url.searchParams.append("channel", channel);
        const id = this.streamId();
        if (id)
            url.searchParams.set("lastEventId", id);
        const es = new this.EventSourceImpl(url.toString());
        let opened = false;
        const onClose = (e) => {
            const { code, reason } = JSON.parse(e.data);
            this.abandon(link, code, reason);
        };
        const link = {
            transport: "sse",
            send: () => false,
            close: () => {
                es.onopen = es.onmessage = es.onerror = null;
                es.removeEventListener("close", onClose);
                es.close();
            },
        };
        es.onopen = () => {
            opened = true;
            this.opened(link);
        };
        es.onmessage = (e) => this.received(link, e.data);
        es.addEventListener("close", onClose);
        es.onerror = () => this.abandon(link, 1006, opened ? "stream broken" : "stream refused");
        return link;
    }
    /** Where every topic stands, as an event stream's id says it (PROTOCOL section 12). */
    streamId() {
        const parts = [];
        const { offset, epoch } = this.direct;
        if (offset !== undefined && epoch !== undefined)
            parts.push(`u${offset}.${epoch}`);
        for (const [channel, at] of this.channels) {
            if (at.offset !== undefined && at.epoch !== undefined)
                parts.push(`c${at.offset}.${at.epoch}.${channel}`);
        }
        return parts.join(" ");
    }
    onStream() {
        return this.link?.transport === "sse" && this.current === "connected";
    }
    /** A new stream in place of this one (its channels or token changed); it resumes. */
    reopen() {
        const link = this.link;
        if (!link)
            return;
        this.link = undefined;
        clearTimeout(this.openDeadline);
        this.stopTimers();
        link.close(NORMAL);
        void this.open();
    }
    opened(link) {
        if (this.link !== link)
            return;
        clearTimeout(this.openDeadline);
        this.openedAt = Date.now();
        this.unsubscribing.clear();
        this.setState("connected");
        // Without a position to resume from, what was published while away cannot be asked
        // for: said, so the application reloads.
        if (this.direct.live && this.direct.epoch === undefined)
            this.emit("lost", {});
        this.direct.live = true;
        for (const [channel, at] of this.channels) {
            if (at.live && at.epoch === undefined)
                this.emit("lost", { channel });
            at.base = undefined;
            at.broken = false;
            this.send(this.subscribeFrame(channel, at));
        }
        if (link.transport === "websocket")
            this.startPings();
    }
    received(link, text) {
        if (this.link !== link)
            return;
        this.alive();
        this.onFrame(text);
    }
    onFrame(text) {
        let frame;
        try {
            frame = JSON.parse(text);
        }
        catch {
            this.emit("error", { code: "bad_frame", detail: text.slice(0, 200) });
            return;
        }
        switch (frame.type) {
            case "message":
                return this.onMessage(frame, text);
            case "connected":
                return this.onPosition(undefined, frame, this.direct);
            case "subscribed": {
                const channel = frame.channel;
                if (this.unsubscribing.get(channel))
                    return; // the reply to a subscribe undone since
                let at = this.channels.get(channel);
                if (!at) {
                    // The backend subscribed this connection (POST /subscribe): follow it like ours.
                    at = {};
                    this.channels.set(channel, at);
                }
                at.live = true;
                // What comes next is whole: the server keeps no base for this subscription yet.
                at.base = undefined;
                at.broken = false;
                this.onPosition(channel, frame, at);
                this.emit("subscribed", {
                    channel,
                    recovered: frame.recovered,
                    offset: frame.offset,
                    epoch: frame.epoch,
                });
                return;
            }
            case "unsubscribed": {
                const channel = frame.channel;
                const pending = this.unsubscribing.get(channel) ?? 0;
                if (pending > 0) {
                    // The reply to our own unsubscribe: a subscribe made again since stands.
                    if (pending === 1)
                        this.unsubscribing.delete(channel);
                    else
                        this.unsubscribing.set(channel, pending - 1);
                }
                else {
                    // The backend (or a refreshed token) ended it: do not subscribe again on reconnect.
                    this.channels.delete(channel);
                }
                this.emit("unsubscribed", { channel });
                return;
            }
            case "expiring":
                // A stream cannot send `refresh`: a new one, with a new token, resumes it.
                if (this.link?.transport === "sse")
                    return this.reopen();
                return void this.refresh();
            case "error":
                this.emit("error", { code: String(frame.error), detail: String(frame.detail ?? "") });
                return;
            default:
                // pong, refreshed: liveness is all they say.
                return;
        }
    }
    /** `connected` or `subscribed`: where a topic stands, and whether a resume worked. */
    onPosition(channel, frame, at) {
        const offset = frame.offset;
        const epoch = frame.epoch;
        if (frame.recovered === false) {
            this.emit("lost", { channel, offset, epoch });
        }
        // A position the server could not read leaves ours as it was: a later resume still asks
        // from where the application really is.
        if (epoch !== undefined && offset !== undefined) {
            const resumed = frame.recovered === true;
            // A recovered resume keeps our offset: the missed messages follow this frame.
            if (!resumed || at.epoch !== epoch)
                at.offset = offset;
            at.epoch = epoch;
        }
    }
    /** `text`: the frame as it came (a delta's base is the message's own text). */
    onMessage(frame, text) {
        const channel = frame.channel;
        const at = channel === undefined ? this.direct : this.channels.get(channel);
        if (!at || at.broken)
            return; // unsubscribed meanwhile, or waiting to start again
        const offset = frame.offset;
        if (offset !== undefined && at.offset !== undefined && offset <= at.offset) {
            return; // already delivered
        }
        let message = frame.message;
        if (frame.delta === true && channel !== undefined) {
            const rebuilt = rebuild(at, offset, frame.message);
            if (rebuilt === undefined) {
                // Never a wrong message: subscribe again from the last one delivered.
                at.broken = true;
                this.emit("error", { code: "bad_delta", detail: `${channel} at offset ${offset}` });
                if (this.send({ type: "unsubscribe", channel })) {
                    this.unsubscribing.set(channel, (this.unsubscribing.get(channel) ?? 0) + 1);
                    this.send(this.subscribeFrame(channel, at));
                }
                return;
            }
            at.base = rebuilt.text;
            message = rebuilt.message;
        }
        else if (this.options.deltas && channel !== undefined) {
            at.base = messageText(text);
        }
        if (offset !== undefined)
            at.offset = offset;
        this.emit("message", { channel, offset, message });
    }
    subscribeFrame(channel, at) {
        const frame = { type: "subscribe", channel };
        if (at.offset !== undefined && at.epoch !== undefined) {
            frame.since = { offset: at.offset, epoch: at.epoch };
        }
        if (this.options.deltas)
            frame.delta = "fossil";
        return frame;
    }
    /** Done with `link` (closed, dead, or never opened): close it without waiting for it to
     * confirm, and decide what next. Once per link. An attempt that never opened moves on to
     * the next transport. */
    abandon(link, code, reason) {
        if (this.link !== link)
            return;
        const stable = this.openedAt !== undefined && Date.now() - this.openedAt >= STABLE_MS;
        if (this.openedAt === undefined)
            this.transportAt += 1;
        this.link = undefined;
        clearTimeout(this.openDeadline);
        this.stopTimers();
        link.close(code);
        this.onClose(code, reason, stable);
    }
    /** `stable`: the connection had lasted (a failure otherwise, for the backoff). */
    onClose(code, reason, stable) {
        if (this.stopped)
            return;
        if (code === DISCONNECTED_BY_BACKEND) {
            // The backend logged this user out: reconnecting would undo it.
            this.stopped = true;
            this.setState("closed");
            this.emit("closed", { code, reason });
            return;
        }
        this.setState("disconnected");
        if (code === TOKEN_EXPIRED && !this.refreshable) {
            // The same token would be refused again.
            this.stopped = true;
            this.setState("closed");
            this.emit("closed", { code, reason });
            return;
        }
        if (stable) {
            // It worked a while: start the backoff over (a fresh token for 4001; the resume fills
            // the gap of a 1008 or a dead connection).
            this.attempts = 0;
        }
        if (code === SERVICE_RESTART) {
            // The server drains: come back at a moment of our own (the resume fills the gap).
            clearTimeout(this.reconnectTimer);
            const delay = Math.random() * this.options.restartReconnectDelay;
            this.reconnectTimer = setTimeout(() => void this.open(), delay);
            return;
        }
        this.scheduleReconnect();
    }
    /** The next attempt after a jittered, capped, exponential delay; a refused upgrade (never
     * opened) counts as a failure, so a server that refuses us is not hammered. */
    scheduleReconnect() {
        if (this.stopped)
            return;
        const { minReconnectDelay: min, maxReconnectDelay: max } = this.options;
        const ceiling = Math.min(max, min * 2 ** this.attempts);
        const delay = ceiling / 2 + Math.random() * (ceiling / 2);
        this.attempts += 1;
        clearTimeout(this.reconnectTimer);
        this.reconnectTimer = setTimeout(() => void this.open(), delay);
    }
    async refresh() {
        try {
            const token = await this.getToken();
            this.send({ type: "refresh", token });
        }
        catch (e) {
            this.emit("error", { code: "token", detail: `getToken failed: ${String(e)}` });
        }
    }
    startPings() {
        this.stopTimers();
        this.pingTimer = setInterval(() => {
            this.send({ type: "ping" });
            if (this.pongDeadline === undefined) {
                const link = this.link;
                this.pongDeadline = setTimeout(() => link && this.abandon(link, DEAD, "no pong"), this.options.pingTimeout);
            }
        }, this.options.pingInterval);
    }
    /** Any frame from the server shows the connection is alive. */
    alive() {
        clearTimeout(this.pongDeadline);
        this.pongDeadline = undefined;
    }
    stopTimers() {
        clearInterval(this.pingTimer);
        this.alive();
    }
    /** Sends now if connected; true if sent. */
    send(frame) {
        return this.link?.send(JSON.stringify(frame)) ?? false;
    }
    setState(state) {
        if (this.current === state)
            return;
        this.current = state;
        this.emit("state", state);
    }
    emit(event, value) {
        for (const listener of this.listeners.get(event) ?? []) {
            try {
                listener(value);
            }
            catch (e) {
                // One listener's bug must not stop delivery to the others.
                console.error(e);
            }
        }
    }
}
/** A fresh idempotency key. */
function newKey() {
    const c = globalThis.crypto;
    if (c?.randomUUID)
        return c.randomUUID();
    return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${Math.random().toString(36).slice(2)}`;
}
/** `promise`, or a rejection after `ms`. */
function withTimeout(promise, ms) {
    let timer;
    const timeout = new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
    });
    return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}
/** The text of a message frame's `message` as it came: the frame's last field. */
function messageText(frame) {
    const at = frame.indexOf('"message":');
    return at < 0 ? undefined : frame.slice(at + 10, -1);
}
/** A delta message rebuilt against `at`'s base: its text and value, or undefined if it does
 * not follow the message the base is, or does not apply. */
function rebuild(at, offset, delta) {
    if (at.base === undefined || typeof delta !== "string")
        return undefined;
    if (offset === undefined || at.offset === undefined || offset !== at.offset + 1)
        return undefined;
    try {
        const bytes = applyDelta(utf8.encode(at.base), utf8.encode(delta));
        const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
        return { text, message: JSON.parse(text) };
    }
    catch {
        return undefined;
    }
}
const utf8 = new TextEncoder();
/** Fossil's delta format (https://fossil-scm.org/home/doc/tip/www/delta_format.wiki): the
 * target rebuilt from `source`; throws on a delta that does not apply or whose checksum
 * differs. */
export function applyDelta(source, delta) {
    let pos = 0;
    const int = () => {
        let value = 0;
        let digits = 0;
        while (pos < delta.length) {
            const d = DIGIT[delta[pos]];
            if (d < 0)
                break;
            value = value * 64 + d;
            pos += 1;
            digits += 1;
        }
        if (digits === 0 || value > 0xffffffff)
            throw new Error("bad delta: a number expected");
        return value;
    };
    const limit = int();
    if (delta[pos++] !== 0x0a)
        throw new Error("bad delta: no size line");
    const out = new Uint8Array(limit);
    let total = 0;
    while (pos < delta.length) {
        const count = int();
        const op = delta[pos++];
        if (op === 0x40 /* @ copy */) {
            const offset = int();
            if (delta[pos++] !== 0x2c)
                throw new Error("bad delta: ',' expected");
            if (offset + count > source.length || total + count > limit)
                throw new Error("bad delta: copy out of range");
            out.set(source.subarray(offset, offset + count), total);
            total += count;
        }
        else if (op === 0x3a /* : insert */) {
            if (pos + count > delta.length || total + count > limit)
                throw new Error("bad delta: insert out of range");
            out.set(delta.subarray(pos, pos + count), total);
            total += count;
            pos += count;
        }
        else if (op === 0x3b /* ; end */) {
            if (total !== limit)
                throw new Error("bad delta: size differs");
            if (count !== checksum(out))
                throw new Error("bad delta: checksum differs");
            return out;
        }
        else {
            throw new Error("bad delta: unknown operator");
        }
    }
    throw new Error("bad delta: unterminated");
}
const DIGIT = (() => {
    const table = new Int8Array(256).fill(-1);
    const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";
    for (let i = 0; i < alphabet.length; i++)
        table[alphabet.charCodeAt(i)] = i;
    return table;
})();
/** Fossil's checksum: the bytes summed as big-endian 32-bit words, modulo 2^32. */
function checksum(bytes) {
    let sum = 0;
    const whole = bytes.length - (bytes.length % 4);
    for (let i = 0; i < whole; i += 4) {
        sum = (sum + ((bytes[i] << 24) | (bytes[i + 1] << 16) | (bytes[i + 2] << 8) | bytes[i + 3])) >>> 0;
    }
    const rest = bytes.length - whole;
    if (rest >= 3)
        sum = (sum + (bytes[whole + 2] << 8)) >>> 0;
    if (rest >= 2)
        sum = (sum + (bytes[whole + 1] << 16)) >>> 0;
    if (rest >= 1)
        sum = (sum + ((bytes[whole] << 24) >>> 0)) >>> 0;
    return sum;
}
/** A refused call of the publish or control API: its HTTP status and the server's words. */
export class FanfareError extends Error {
    status;
    body;
    constructor(status, body) {
        super(`fanfare: HTTP ${status}: ${typeof body === "string" ? body : JSON.stringify(body)}`);
        this.status = status;
        this.body = body;
    }
}
/** The publish and control API, for a Node.js backend (or any with fetch). */
export class FanfareBackend {
    options;
    fetchImpl;
    constructor(options) {
        this.options = options;
        this.fetchImpl = options.fetch ?? fetch;
    }
    /** To every connection of `userId`. */
    message(userId, message, options = {}) {
        return this.publishing("/message", this.keyed({ userId, message, ...options }));
    }
    /** To every subscriber of `channel`. */
    publish(channel, message, options = {}) {
        return this.publishing("/publish", this.keyed({ channel, message, ...options }));
    }
    /** To every connection. */
    broadcast(message, options = {}) {
        return this.publishing("/broadcast", this.keyed({ message, ...options }));
    }
    /** Several at once, in order. */
    batch(items) {
        return this.publishing("/batch", items.map((item) => this.keyed(item)));
    }
    /** `body` with an idempotency key when retries are on and it has none. */
    keyed(body) {
        if (body.idempotencyKey !== undefined || (this.options.retries ?? 3) === 0)
            return body;
        return { ...body, idempotencyKey: newKey() };
    }
    /** POSTs a publication, again (same body, same keys) after a failure a retry may mend. */
    async publishing(path, body) {
        const retries = this.options.retries ?? 3;
        let delay = this.options.retryDelay ?? 200;
        for (let attempt = 0;; attempt++) {
            try {
                return await this.post(path, body);
            }
            catch (e) {
                const again = !(e instanceof FanfareError) || e.status === 503 || e.status === 409;
                if (!again || attempt >= retries)
                    throw e;
            }
            await new Promise((resolve) => setTimeout(resolve, delay));
            delay *= 2;
        }
    }
    /** Closes every connection of `userId` (code 4003): a logout. */
    disconnect(userId, reason) {
        return this.post("/disconnect", reason === undefined ? { userId } : { userId, reason });
    }
    subscribe(userId, channel) {
        return this.post("/subscribe", { userId, channel });
    }
    unsubscribe(userId, channel) {
        return this.post("/unsubscribe", { userId, channel });
    }
    async post(path, body) {
        const response = await this.fetchImpl(new URL(path, this.options.url), {
            method: "POST",
            headers: {
                Authorization: `Bearer ${this.options.apiKey}`,
                "Content-Type": "application/json",
            },
            body: JSON.stringify(body),
        });
        const text = await response.text();
        let parsed = text;
        try {
            parsed = JSON.parse(text);
        }
        catch {
            // Not JSON: keep the text.
        }
        if (!response.ok)
            throw new FanfareError(response.status, parsed);
        return parsed;
    }
}
