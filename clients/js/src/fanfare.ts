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

/** Where the connection stands. */
export type State = "connecting" | "connected" | "disconnected" | "closed";

/** A message as the application gets it, once. */
export interface Message {
  /** The channel, or undefined for a direct message to this user. */
  channel?: string;
  /** Its place in its topic (with history on the server). */
  offset?: number;
  /** The published JSON value. */
  message: unknown;
}

/** A gap the server could not fill: the application should reload what it shows. */
export interface Lost {
  /** The channel, or undefined for the user's direct messages. */
  channel?: string;
  /** Where the topic stands now; what follows is live. Undefined if the server could not say. */
  offset?: number;
  epoch?: string;
}

/** The server's `subscribed` reply. */
export interface Subscribed {
  channel: string;
  recovered?: boolean;
  offset?: number;
  epoch?: string;
}

/** An `error` frame from the server, or a failure of the client itself. */
export interface ClientError {
  code: string;
  detail: string;
}

/** Why the client stopped for good (it will not reconnect by itself). */
export interface Closed {
  code: number;
  reason: string;
}

export interface Events {
  state: State;
  message: Message;
  subscribed: Subscribed;
  unsubscribed: { channel: string };
  lost: Lost;
  error: ClientError;
  closed: Closed;
}

/** The constructor of a WebSocket implementation (the browser's, Node's, or the `ws` package). */
export type WebSocketLike = new (url: string) => WebSocket;

/** The constructor of an EventSource implementation (the browser's, or a package's). */
export type EventSourceLike = new (url: string) => EventSource;

/** What carries the client's connection: a WebSocket (`/ws`), or Server-Sent Events (`/sse`). */
export type Transport = "websocket" | "sse";

export interface Options {
  /** The server's WebSocket endpoint, e.g. `wss://push.example.com/ws`. */
  url: string;
  /** A token; or give `getToken`. */
  token?: string;
  /** Called for every connection attempt and when the token expires (preferred to `token`). */
  getToken?: () => string | Promise<string>;
  /** Channels to subscribe to from the start. */
  channels?: string[];
  /** Defaults to the global WebSocket. */
  WebSocket?: WebSocketLike;
  /** First reconnect delay, in ms (default 250); doubles per failed attempt... */
  minReconnectDelay?: number;
  /** ...up to this (default 10,000). Each delay is jittered between half and all of it. */
  maxReconnectDelay?: number;
  /** How often to ping the server, in ms (default 20,000). */
  pingInterval?: number;
  /** A ping not answered within this is a dead connection, in ms (default 10,000). */
  pingTimeout?: number;
  /** A connection not open within this is given up and tried again, in ms (default 10,000). */
  connectTimeout?: number;
  /** After the server closes for a restart (1012), reconnect after a random delay up to this,
   * in ms (default 5,000), so a fleet's clients do not all come back in the same second. */
  restartReconnectDelay?: number;
  /** Ask for channel messages as deltas against the previous one (`"delta":"fossil"`; the
   * server sends them for channels with history when smaller). Default false. */
  deltas?: boolean;
  /** What to connect with, in order (default `["websocket"]`). After an attempt that never
   * opened, the next one is tried; one that opened is kept. On `"sse"` the client only
   * listens: a subscribe, an unsubscribe or a token refresh opens a new stream that resumes
   * where the old one stood. */
  transports?: Transport[];
  /** Defaults to the global EventSource (for `transports` with `"sse"`). */
  EventSource?: EventSourceLike;
}

/** Where a topic (a channel, or the user's direct messages) stands for this client. */
export interface Position {
  offset?: number;
  epoch?: string;
}

/** A topic as the client follows it. */
interface Topic extends Position {
  /** Received on an earlier connection: a reconnect without a position may have missed
   * messages, which is said (`lost`), not hidden. */
  live?: boolean;
  /** With deltas: the JSON text of the last message, the base of the next delta. */
  base?: string;
  /** A delta did not apply: its messages are dropped until it is subscribed again. */
  broken?: boolean;
}

/** One connection, whatever carries it. */
interface Link {
  readonly transport: Transport;
  /** Sends a frame now; false if it cannot (not open, or a stream, which only listens). */
  send(text: string): boolean;
  /** Closes it without waiting; nothing of it is heard after. */
  close(code: number): void;
}

/** A connection that lasted this long resets the backoff; shorter ones count as failures, so a
 * server that accepts and drops at once is not hammered. */
const STABLE_MS = 5_000;

type Listener<T> = (value: T) => void;

// Close codes (docs/PROTOCOL.md).
const NORMAL = 1000;
const SLOW_CONSUMER = 1008;
const TOKEN_EXPIRED = 4001;
const DISCONNECTED_BY_BACKEND = 4003;
const SERVICE_RESTART = 1012;
/** Ours: the connection stopped answering pings. */
const DEAD = 4000;

export class FanfareClient {
  private readonly options: Required<
    Omit<Options, "token" | "getToken" | "channels" | "WebSocket" | "EventSource">
  >;
  private readonly getToken: () => string | Promise<string>;
  /** A `getToken` was given: an expired token can be replaced. */
  private readonly refreshable: boolean;
  private readonly WebSocketImpl: WebSocketLike;
  private readonly EventSourceImpl?: EventSourceLike;
  /** Which of `options.transports` the next attempt uses. */
  private transportAt = 0;
  private readonly listeners = new Map<keyof Events, Set<Listener<never>>>();
  /** Wanted channels, each with where the application is in it. */
  private readonly channels = new Map<string, Topic>();
  /** Unsubscribes sent and not yet answered, per channel: their `unsubscribed` must not end
   * a subscription made again since. */
  private readonly unsubscribing = new Map<string, number>();
  private direct: Topic = {};
  /** Numbers connection attempts: an attempt overtaken (by `close()`, a newer one) stops. */
  private attempt = 0;
  private link?: Link;
  private current: State = "disconnected";
  /** Failed attempts in a row (reset once a connection opens). */
  private attempts = 0;
  private reconnectTimer?: ReturnType<typeof setTimeout>;
  private pingTimer?: ReturnType<typeof setInterval>;
  private pongDeadline?: ReturnType<typeof setTimeout>;
  private openDeadline?: ReturnType<typeof setTimeout>;
  /** When the current connection opened. */
  private openedAt?: number;
  private stopped = true;

  constructor(options: Options) {
    const token = options.token;
    if (!options.getToken && token === undefined) {
      throw new Error("fanfare: give a token or getToken");
    }
    this.getToken = options.getToken ?? (() => token as string);
    this.refreshable = options.getToken !== undefined;
    const transports = options.transports ?? ["websocket"];
    const Impl = options.WebSocket ?? (globalThis as { WebSocket?: WebSocketLike }).WebSocket;
    if (!Impl && transports.includes("websocket")) {
      throw new Error("fanfare: no WebSocket here; pass one as options.WebSocket");
    }
    this.WebSocketImpl = Impl as WebSocketLike;
    this.EventSourceImpl = options.EventSource ?? (globalThis as { EventSource?: EventSourceLike }).EventSource;
    if (!this.EventSourceImpl && transports.includes("sse")) {
      throw new Error("fanfare: no EventSource here; pass one as options.EventSource");
    }
    if (transports.length === 0) throw new Error("fanfare: no transport");
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
  on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    const stored = listener as Listener<never>;
    set.add(stored);
    return () => set.delete(stored);
  }

  get state(): State {
    return this.current;
  }

  /** What carries the connection now (undefined while not connected). */
  get transport(): Transport | undefined {
    return this.current === "connected" ? this.link?.transport : undefined;
  }

  /** Connects, and keeps connecting until `close()`. */
  connect(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.open();
  }

  /** Closes for good (no reconnect). */
  close(): void {
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
  subscribe(channel: string): void {
    if (this.channels.has(channel)) return;
    this.channels.set(channel, {});
    if (this.onStream()) return this.reopen();
    this.send(this.subscribeFrame(channel, {}));
  }

  unsubscribe(channel: string): void {
    if (!this.channels.delete(channel)) return;
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
  positions(): { direct: Position; channels: Record<string, Position> } {
    const copy = ({ offset, epoch }: Topic): Position => ({ offset, epoch });
    const channels = [...this.channels].map(([c, at]) => [c, copy(at)]);
    return { direct: copy(this.direct), channels: Object.fromEntries(channels) };
  }

  private async open(): Promise<void> {
    if (this.stopped) return;
    const attempt = ++this.attempt;
    this.setState("connecting");
    let token: string;
    try {
      // A getToken that never settles must not stall the client.
      token = await withTimeout(Promise.resolve(this.getToken()), this.options.connectTimeout);
    } catch (e) {
      if (attempt !== this.attempt) return;
      this.emit("error", { code: "token", detail: `getToken failed: ${String(e)}` });
      this.scheduleReconnect();
      return;
    }
    if (this.stopped || attempt !== this.attempt) return;
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
  private openSocket(token: string): Link {
    const url = new URL(this.options.url);
    url.searchParams.set("token", token);
    if (this.direct.offset !== undefined && this.direct.epoch !== undefined) {
      url.searchParams.set("since", String(this.direct.offset));
      url.searchParams.set("epoch", this.direct.epoch);
    }
    const ws = new this.WebSocketImpl(url.toString());
    const link: Link = {
      transport: "websocket",
      send: (text) => {
        if (ws.readyState !== 1) return false;
        ws.send(text);
        return true;
      },
      close: (code) => {
        ws.onopen = ws.onmessage = ws.onclose = null;
        try {
          ws.close(code >= 3000 && code < 5000 ? code : NORMAL);
        } catch {
          // Already closing.
        }
      },
    };
    ws.onopen = () => this.opened(link);
    ws.onmessage = (e: MessageEvent) => {
      if (typeof e.data === "string") this.received(link, e.data);
    };
    ws.onclose = (e: CloseEvent) => this.abandon(link, e.code, e.reason);
    // An error is always followed by a close, which decides what happens next.
    ws.onerror = () => {};
    return link;
  }

  /** A stream of Server-Sent Events from `/sse` (beside `/ws` on the same server), its
   * channels in the URL and every topic resuming from the positions it carries. The client
   * does its own reconnecting: the EventSource's is stopped at the first error. */
  private openStream(token: string): Link {
    const url = new URL(this.options.url);
    url.protocol = url.protocol === "wss:" ? "https:" : url.protocol === "ws:" ? "http:" : url.protocol;
    url.pathname = url.pathname.replace(/\/ws$/, "") + "/sse";
    url.search = "";
    url.searchParams.set("token", token);
    for (const channel of this.channels.keys()) url.searchParams.append("channel", channel);
    const id = this.streamId();
    if (id) url.searchParams.set("lastEventId", id);
    const es = new (this.EventSourceImpl as EventSourceLike)(url.toString());
    let opened = false;
    const onClose = (e: Event) => {
      const { code, reason } = JSON.parse((e as MessageEvent).data);
      this.abandon(link, code, reason);
    };
    const link: Link = {
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
    es.onmessage = (e: MessageEvent) => this.received(link, e.data);
    es.addEventListener("close", onClose);
    es.onerror = () => this.abandon(link, 1006, opened ? "stream broken" : "stream refused");
    return link;
  }

  /** Where every topic stands, as an event stream's id says it (PROTOCOL section 12). */
  private streamId(): string {
    const parts: string[] = [];
    const { offset, epoch } = this.direct;
    if (offset !== undefined && epoch !== undefined) parts.push(`u${offset}.${epoch}`);
    for (const [channel, at] of this.channels) {
      if (at.offset !== undefined && at.epoch !== undefined) parts.push(`c${at.offset}.${at.epoch}.${channel}`);
    }
    return parts.join(" ");
  }

  private onStream(): boolean {
    return this.link?.transport === "sse" && this.current === "connected";
  }

  /** A new stream in place of this one (its channels or token changed); it resumes. */
  private reopen(): void {
    const link = this.link;
    if (!link) return;
    this.link = undefined;
    clearTimeout(this.openDeadline);
    this.stopTimers();
    link.close(NORMAL);
    void this.open();
  }

  private opened(link: Link): void {
    if (this.link !== link) return;
    clearTimeout(this.openDeadline);
    this.openedAt = Date.now();
    this.unsubscribing.clear();
    this.setState("connected");
    // Without a position to resume from, what was published while away cannot be asked
    // for: said, so the application reloads.
    if (this.direct.live && this.direct.epoch === undefined) this.emit("lost", {});
    this.direct.live = true;
    for (const [channel, at] of this.channels) {
      if (at.live && at.epoch === undefined) this.emit("lost", { channel });
      at.base = undefined;
      at.broken = false;
      this.send(this.subscribeFrame(channel, at));
    }
    if (link.transport === "websocket") this.startPings();
  }

  private received(link: Link, text: string): void {
    if (this.link !== link) return;
    this.alive();
    this.onFrame(text);
  }

  private onFrame(text: string): void {
    let frame: Record<string, unknown>;
    try {
      frame = JSON.parse(text);
    } catch {
      this.emit("error", { code: "bad_frame", detail: text.slice(0, 200) });
      return;
    }
    switch (frame.type) {
      case "message":
        return this.onMessage(frame, text);
      case "connected":
        return this.onPosition(undefined, frame, this.direct);
      case "subscribed": {
        const channel = frame.channel as string;
        if (this.unsubscribing.get(channel)) return; // the reply to a subscribe undone since
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
          recovered: frame.recovered as boolean | undefined,
          offset: frame.offset as number | undefined,
          epoch: frame.epoch as string | undefined,
        });
        return;
      }
      case "unsubscribed": {
        const channel = frame.channel as string;
        const pending = this.unsubscribing.get(channel) ?? 0;
        if (pending > 0) {
          // The reply to our own unsubscribe: a subscribe made again since stands.
          if (pending === 1) this.unsubscribing.delete(channel);
          else this.unsubscribing.set(channel, pending - 1);
        } else {
          // The backend (or a refreshed token) ended it: do not subscribe again on reconnect.
          this.channels.delete(channel);
        }
        this.emit("unsubscribed", { channel });
        return;
      }
      case "expiring":
        // A stream cannot send `refresh`: a new one, with a new token, resumes it.
        if (this.link?.transport === "sse") return this.reopen();
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
  private onPosition(channel: string | undefined, frame: Record<string, unknown>, at: Position): void {
    const offset = frame.offset as number | undefined;
    const epoch = frame.epoch as string | undefined;
    if (frame.recovered === false) {
      this.emit("lost", { channel, offset, epoch });
    }
    // A position the server could not read leaves ours as it was: a later resume still asks
    // from where the application really is.
    if (epoch !== undefined && offset !== undefined) {
      const resumed = frame.recovered === true;
      // A recovered resume keeps our offset: the missed messages follow this frame.
      if (!resumed || at.epoch !== epoch) at.offset = offset;
      at.epoch = epoch;
    }
  }

  /** `text`: the frame as it came (a delta's base is the message's own text). */
  private onMessage(frame: Record<string, unknown>, text: string): void {
    const channel = frame.channel as string | undefined;
    const at = channel === undefined ? this.direct : this.channels.get(channel);
    if (!at || at.broken) return; // unsubscribed meanwhile, or waiting to start again
    const offset = frame.offset as number | undefined;
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
    } else if (this.options.deltas && channel !== undefined) {
      at.base = messageText(text);
    }
    if (offset !== undefined) at.offset = offset;
    this.emit("message", { channel, offset, message });
  }

  private subscribeFrame(channel: string, at: Position): object {
    const frame: Record<string, unknown> = { type: "subscribe", channel };
    if (at.offset !== undefined && at.epoch !== undefined) {
      frame.since = { offset: at.offset, epoch: at.epoch };
    }
    if (this.options.deltas) frame.delta = "fossil";
    return frame;
  }

  /** Done with `link` (closed, dead, or never opened): close it without waiting for it to
   * confirm, and decide what next. Once per link. An attempt that never opened moves on to
   * the next transport. */
  private abandon(link: Link, code: number, reason: string): void {
    if (this.link !== link) return;
    const stable = this.openedAt !== undefined && Date.now() - this.openedAt >= STABLE_MS;
    if (this.openedAt === undefined) this.transportAt += 1;
    this.link = undefined;
    clearTimeout(this.openDeadline);
    this.stopTimers();
    link.close(code);
    this.onClose(code, reason, stable);
  }

  /** `stable`: the connection had lasted (a failure otherwise, for the backoff). */
  private onClose(code: number, reason: string, stable: boolean): void {
    if (this.stopped) return;
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
  private scheduleReconnect(): void {
    if (this.stopped) return;
    const { minReconnectDelay: min, maxReconnectDelay: max } = this.options;
    const ceiling = Math.min(max, min * 2 ** this.attempts);
    const delay = ceiling / 2 + Math.random() * (ceiling / 2);
    this.attempts += 1;
    clearTimeout(this.reconnectTimer);
    this.reconnectTimer = setTimeout(() => void this.open(), delay);
  }

  private async refresh(): Promise<void> {
    try {
      const token = await this.getToken();
      this.send({ type: "refresh", token });
    } catch (e) {
      this.emit("error", { code: "token", detail: `getToken failed: ${String(e)}` });
    }
  }

  private startPings(): void {
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
  private alive(): void {
    clearTimeout(this.pongDeadline);
    this.pongDeadline = undefined;
  }

  private stopTimers(): void {
    clearInterval(this.pingTimer);
    this.alive();
  }

  /** Sends now if connected; true if sent. */
  private send(frame: object): boolean {
    return this.link?.send(JSON.stringify(frame)) ?? false;
  }

  private setState(state: State): void {
    if (this.current === state) return;
    this.current = state;
    this.emit("state", state);
  }

  private emit<K extends keyof Events>(event: K, value: Events[K]): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        (listener as Listener<Events[K]>)(value);
      } catch (e) {
        // One listener's bug must not stop delivery to the others.
        console.error(e);
      }
    }
  }
}

/** A fresh idempotency key. */
function newKey(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  if (c?.randomUUID) return c.randomUUID();
  return `${Date.now().toString(36)}-${Math.random().toString(36).slice(2)}-${Math.random().toString(36).slice(2)}`;
}

/** `promise`, or a rejection after `ms`. */
function withTimeout<T>(promise: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** The text of a message frame's `message` as it came: the frame's last field. */
function messageText(frame: string): string | undefined {
  const at = frame.indexOf('"message":');
  return at < 0 ? undefined : frame.slice(at + 10, -1);
}

/** A delta message rebuilt against `at`'s base: its text and value, or undefined if it does
 * not follow the message the base is, or does not apply. */
function rebuild(
  at: Topic,
  offset: number | undefined,
  delta: unknown,
): { text: string; message: unknown } | undefined {
  if (at.base === undefined || typeof delta !== "string") return undefined;
  if (offset === undefined || at.offset === undefined || offset !== at.offset + 1) return undefined;
  try {
    const bytes = applyDelta(utf8.encode(at.base), utf8.encode(delta));
    const text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    return { text, message: JSON.parse(text) };
  } catch {
    return undefined;
  }
}

const utf8 = new TextEncoder();

/** Fossil's delta format (https://fossil-scm.org/home/doc/tip/www/delta_format.wiki): the
 * target rebuilt from `source`; throws on a delta that does not apply or whose checksum
 * differs. */
export function applyDelta(source: Uint8Array, delta: Uint8Array): Uint8Array {
  let pos = 0;
  const int = (): number => {
    let value = 0;
    let digits = 0;
    while (pos < delta.length) {
      const d = DIGIT[delta[pos]];
      if (d < 0) break;
      value = value * 64 + d;
      pos += 1;
      digits += 1;
    }
    if (digits === 0 || value > 0xffffffff) throw new Error("bad delta: a number expected");
    return value;
  };
  const limit = int();
  if (delta[pos++] !== 0x0a) throw new Error("bad delta: no size line");
  const out = new Uint8Array(limit);
  let total = 0;
  while (pos < delta.length) {
    const count = int();
    const op = delta[pos++];
    if (op === 0x40 /* @ copy */) {
      const offset = int();
      if (delta[pos++] !== 0x2c) throw new Error("bad delta: ',' expected");
      if (offset + count > source.length || total + count > limit) throw new Error("bad delta: copy out of range");
      out.set(source.subarray(offset, offset + count), total);
      total += count;
    } else if (op === 0x3a /* : insert */) {
      if (pos + count > delta.length || total + count > limit) throw new Error("bad delta: insert out of range");
      out.set(delta.subarray(pos, pos + count), total);
      total += count;
      pos += count;
    } else if (op === 0x3b /* ; end */) {
      if (total !== limit) throw new Error("bad delta: size differs");
      if (count !== checksum(out)) throw new Error("bad delta: checksum differs");
      return out;
    } else {
      throw new Error("bad delta: unknown operator");
    }
  }
  throw new Error("bad delta: unterminated");
}

const DIGIT = (() => {
  const table = new Int8Array(256).fill(-1);
  const alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ_abcdefghijklmnopqrstuvwxyz~";
  for (let i = 0; i < alphabet.length; i++) table[alphabet.charCodeAt(i)] = i;
  return table;
})();

/** Fossil's checksum: the bytes summed as big-endian 32-bit words, modulo 2^32. */
function checksum(bytes: Uint8Array): number {
  let sum = 0;
  const whole = bytes.length - (bytes.length % 4);
  for (let i = 0; i < whole; i += 4) {
    sum = (sum + ((bytes[i] << 24) | (bytes[i + 1] << 16) | (bytes[i + 2] << 8) | bytes[i + 3])) >>> 0;
  }
  const rest = bytes.length - whole;
  if (rest >= 3) sum = (sum + (bytes[whole + 2] << 8)) >>> 0;
  if (rest >= 2) sum = (sum + (bytes[whole + 1] << 16)) >>> 0;
  if (rest >= 1) sum = (sum + ((bytes[whole] << 24) >>> 0)) >>> 0;
  return sum;
}

/** A refused call of the publish or control API: its HTTP status and the server's words. */
export class FanfareError extends Error {
  constructor(
    readonly status: number,
    readonly body: unknown,
  ) {
    super(`fanfare: HTTP ${status}: ${typeof body === "string" ? body : JSON.stringify(body)}`);
  }
}

export interface BackendOptions {
  /** The server's base URL, e.g. `http://127.0.0.1:8080`. */
  url: string;
  apiKey: string;
  /** Defaults to the global fetch. */
  fetch?: typeof fetch;
  /** A publish that fails on the way (no answer, 503, or 409 while its first try is still on
   * its way) is sent again this many times (default 3), with the same `idempotencyKey`, so it
   * is delivered once whatever happened to the tries before. 0: never. */
  retries?: number;
  /** First delay between tries, in ms (default 200); doubles each time. */
  retryDelay?: number;
}

/** A publish's own options. */
export interface PublishOptions {
  /** Names this publication for `--idempotency-ttl` (1 to 64 bytes): the server answers a
   * repeat as it answered the first and delivers it nowhere. Made up when retries are on. */
  idempotencyKey?: string;
}

/** One item of `batch`: a direct message or a channel message. */
export type BatchItem = ({ userId: string; message: unknown } | { channel: string; message: unknown }) &
  PublishOptions;

/** The answer to a publish: with history, where each message was taken (offset and epoch). */
export interface Published {
  ok: true;
  offset?: number;
  epoch?: string;
  offsets?: number[];
  epochs?: string[];
}

/** The publish and control API, for a Node.js backend (or any with fetch). */
export class FanfareBackend {
  private readonly fetchImpl: typeof fetch;

  constructor(private readonly options: BackendOptions) {
    this.fetchImpl = options.fetch ?? fetch;
  }

  /** To every connection of `userId`. */
  message(userId: string, message: unknown, options: PublishOptions = {}): Promise<Published> {
    return this.publishing("/message", this.keyed({ userId, message, ...options }));
  }

  /** To every subscriber of `channel`. */
  publish(channel: string, message: unknown, options: PublishOptions = {}): Promise<Published> {
    return this.publishing("/publish", this.keyed({ channel, message, ...options }));
  }

  /** To every connection. */
  broadcast(message: unknown, options: PublishOptions = {}): Promise<Published> {
    return this.publishing("/broadcast", this.keyed({ message, ...options }));
  }

  /** Several at once, in order. */
  batch(items: BatchItem[]): Promise<Published> {
    return this.publishing(
      "/batch",
      items.map((item) => this.keyed(item)),
    );
  }

  /** `body` with an idempotency key when retries are on and it has none. */
  private keyed<T extends PublishOptions>(body: T): T {
    if (body.idempotencyKey !== undefined || (this.options.retries ?? 3) === 0) return body;
    return { ...body, idempotencyKey: newKey() };
  }

  /** POSTs a publication, again (same body, same keys) after a failure a retry may mend. */
  private async publishing(path: string, body: unknown): Promise<Published> {
    const retries = this.options.retries ?? 3;
    let delay = this.options.retryDelay ?? 200;
    for (let attempt = 0; ; attempt++) {
      try {
        return await this.post<Published>(path, body);
      } catch (e) {
        const again = !(e instanceof FanfareError) || e.status === 503 || e.status === 409;
        if (!again || attempt >= retries) throw e;
      }
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay *= 2;
    }
  }

  /** Closes every connection of `userId` (code 4003): a logout. */
  disconnect(userId: string, reason?: string): Promise<Published> {
    return this.post("/disconnect", reason === undefined ? { userId } : { userId, reason });
  }

  subscribe(userId: string, channel: string): Promise<Published> {
    return this.post("/subscribe", { userId, channel });
  }

  unsubscribe(userId: string, channel: string): Promise<Published> {
    return this.post("/unsubscribe", { userId, channel });
  }

  private async post<T>(path: string, body: unknown): Promise<T> {
    const response = await this.fetchImpl(new URL(path, this.options.url), {
      method: "POST",
      headers: {
        Authorization: `Bearer ${this.options.apiKey}`,
        "Content-Type": "application/json",
      },
      body: JSON.stringify(body),
    });
    const text = await response.text();
    let parsed: unknown = text;
    try {
      parsed = JSON.parse(text);
    } catch {
      // Not JSON: keep the text.
    }
    if (!response.ok) throw new FanfareError(response.status, parsed);
    return parsed as T;
  }
}
