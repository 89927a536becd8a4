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
    unsubscribed: {
        channel: string;
    };
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
type Listener<T> = (value: T) => void;
export declare class FanfareClient {
    private readonly options;
    private readonly getToken;
    /** A `getToken` was given: an expired token can be replaced. */
    private readonly refreshable;
    private readonly WebSocketImpl;
    private readonly EventSourceImpl?;
    /** Which of `options.transports` the next attempt uses. */
    private transportAt;
    private readonly listeners;
    /** Wanted channels, each with where the application is in it. */
    private readonly channels;
    /** Unsubscribes sent and not yet answered, per channel: their `unsubscribed` must not end
     * a subscription made again since. */
    private readonly unsubscribing;
    private direct;
    /** Numbers connection attempts: an attempt overtaken (by `close()`, a newer one) stops. */
    private attempt;
    private link?;
    private current;
    /** Failed attempts in a row (reset once a connection opens). */
    private attempts;
    private reconnectTimer?;
    private pingTimer?;
    private pongDeadline?;
    private openDeadline?;
    /** When the current connection opened. */
    private openedAt?;
    private stopped;
    constructor(options: Options);
    /** Listens to an event; returns a function that stops listening. */
    on<K extends keyof Events>(event: K, listener: Listener<Events[K]>): () => void;
    get state(): State;
    /** What carries the connection now (undefined while not connected). */
    get transport(): Transport | undefined;
    /** Connects, and keeps connecting until `close()`. */
    connect(): void;
    /** Closes for good (no reconnect). */
    close(): void;
    /** Subscribes to a channel, now if connected and after every reconnect. */
    subscribe(channel: string): void;
    unsubscribe(channel: string): void;
    /** Where each topic stands for the application (a copy). */
    positions(): {
        direct: Position;
        channels: Record<string, Position>;
    };
    private open;
    /** A WebSocket to `/ws`, resuming the direct messages in its URL and each channel by a
     * `subscribe` once open. */
    private openSocket;
    /** A stream of Server-Sent Events from `/sse` (beside `/ws` on the same server), its
     * channels in the URL and every topic resuming from the positions it carries. The client
     * does its own reconnecting: the EventSource's is stopped at the first error. */
    private openStream;
    /** Where every topic stands, as an event stream's id says it (PROTOCOL section 12). */
    private streamId;
    private onStream;
    /** A new stream in place of this one (its channels or token changed); it resumes. */
    private reopen;
    private opened;
    private received;
    private onFrame;
    /** `connected` or `subscribed`: where a topic stands, and whether a resume worked. */
    private onPosition;
    /** `text`: the frame as it came (a delta's base is the message's own text). */
    private onMessage;
    private subscribeFrame;
    /** Done with `link` (closed, dead, or never opened): close it without waiting for it to
     * confirm, and decide what next. Once per link. An attempt that never opened moves on to
     * the next transport. */
    private abandon;
    /** `stable`: the connection had lasted (a failure otherwise, for the backoff). */
    private onClose;
    /** The next attempt after a jittered, capped, exponential delay; a refused upgrade (never
     * opened) counts as a failure, so a server that refuses us is not hammered. */
    private scheduleReconnect;
    private refresh;
    private startPings;
    /** Any frame from the server shows the connection is alive. */
    private alive;
    private stopTimers;
    /** Sends now if connected; true if sent. */
    private send;
    private setState;
    private emit;
}
/** Fossil's delta format (https://fossil-scm.org/home/doc/tip/www/delta_format.wiki): the
 * target rebuilt from `source`; throws on a delta that does not apply or whose checksum
 * differs. */
export declare function applyDelta(source: Uint8Array, delta: Uint8Array): Uint8Array;
/** A refused call of the publish or control API: its HTTP status and the server's words. */
export declare class FanfareError extends Error {
    readonly status: number;
    readonly body: unknown;
    constructor(status: number, body: unknown);
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
export type BatchItem = ({
    userId: string;
    message: unknown;
} | {
    channel: string;
    message: unknown;
}) & PublishOptions;
/** The answer to a publish: with history, where each message was taken (offset and epoch). */
export interface Published {
    ok: true;
    offset?: number;
    epoch?: string;
    offsets?: number[];
    epochs?: string[];
}
/** The publish and control API, for a Node.js backend (or any with fetch). */
export declare class FanfareBackend {
    private readonly options;
    private readonly fetchImpl;
    constructor(options: BackendOptions);
    /** To every connection of `userId`. */
    message(userId: string, message: unknown, options?: PublishOptions): Promise<Published>;
    /** To every subscriber of `channel`. */
    publish(channel: string, message: unknown, options?: PublishOptions): Promise<Published>;
    /** To every connection. */
    broadcast(message: unknown, options?: PublishOptions): Promise<Published>;
    /** Several at once, in order. */
    batch(items: BatchItem[]): Promise<Published>;
    /** `body` with an idempotency key when retries are on and it has none. */
    private keyed;
    /** POSTs a publication, again (same body, same keys) after a failure a retry may mend. */
    private publishing;
    /** Closes every connection of `userId` (code 4003): a logout. */
    disconnect(userId: string, reason?: string): Promise<Published>;
    subscribe(userId: string, channel: string): Promise<Published>;
    unsubscribe(userId: string, channel: string): Promise<Published>;
    private post;
}
export {};
