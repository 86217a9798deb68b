/** PostHog → Intercom: sends chosen PostHog events to Intercom as data events on the right contact.
 *
 * Loaded by PostHog as ONE file (Babel, then a sandbox): only @posthog/plugin-scaffold, node-fetch,
 * crypto and url may be imported, and there are no timers, no `process`, no AbortController.
 * Read top to bottom, this file follows an event:
 *   constants (every cache key in CACHE_KEYS) · types · config · filter and identity · logging helpers ·
 *   contact resolution and its caches · payload · delivery · transport (callIntercom, the status policy
 *   and FAILURE_POLICY) · retry queue · contact and company sync (a side path) · PostHog hooks.
 */
import {
    CacheExtension,
    ConsoleExtension,
    Properties,
    ProcessedPluginEvent,
    RetryError,
} from '@posthog/plugin-scaffold'
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'crypto'
import fetch from 'node-fetch'

// ---------------------------------------------------------------------------------------------------
// Constants
// ---------------------------------------------------------------------------------------------------

type Region = 'US' | 'EU' | 'AU'

/** Intercom's documented regional hosts: the API key is only ever sent to one of these. */
export const REGION_HOSTS: Record<Region, string> = {
    US: 'https://api.intercom.io',
    EU: 'https://api.eu.intercom.io',
    AU: 'https://api.au.intercom.io',
}
/** How GET /me names each region in `app.region`. */
export const INTERCOM_REGION_NAMES: Record<string, Region> = { US: 'US', Europe: 'EU', AU: 'AU' }

const API_VERSION = '2.11'
const REQUEST_TIMEOUT_MS = 10_000
/** Intercom tracks only the first 10 metadata keys and strings up to 255 characters. */
const MAX_METADATA_KEYS = 10
const MAX_STRING_LENGTH = 255
const CONTACT_TTL_SECONDS = 24 * 3600
/** Short, so that a contact created in Intercom shortly after is found soon. */
const NOT_FOUND_TTL_SECONDS = 60
/** Intercom's search lags newly created contacts by minutes: recent events wait for it. */
const SEARCH_LAG_SECONDS = 15 * 60
/** Used when a 429 carries no usable X-RateLimit-Reset: Intercom's windows are 10 s long. */
const DEFAULT_BACKOFF_MS = 10_000
const MAX_BACKOFF_MS = 60_000
const LOCAL_CACHE_MAX_ENTRIES = 10_000
/** Exported for the fault campaign, which fills the queue to this bound. */
export const QUEUE_MAX_LENGTH = 10_000
const QUEUE_MAX_AGE_SECONDS = 24 * 3600
export const QUEUE_MAX_ATTEMPTS = 10
/** Items read from the queue at once (LRANGE), then delivered QUEUE_CONCURRENCY at a time. */
const QUEUE_BATCH = 100
const QUEUE_CONCURRENCY = 10
/** runEveryMinute stops draining after this, well inside PostHog's per-call limits. */
const QUEUE_DRAIN_BUDGET_MS = 20_000
/** onEvent drains this much at most (runtimes from March 2025 never call runEveryMinute)… */
const EVENT_DRAIN_ITEMS = 50
const EVENT_DRAIN_BUDGET_MS = 5_000
/** …on every event while there is a backlog, and at most once a second per worker while it is empty. */
const EVENT_DRAIN_EVERY_MS = 1_000
/** One drainer at a time; the lock's key changes every 10 minutes, so a dead holder's lock cannot last. */
const DRAIN_LOCK_SECONDS = 60
const DRAIN_LOCK_SLOT_MS = 10 * 60_000
/** Where timers exist and nothing parks events (PostHog's current executor): bounded waits in place. */
const MAX_WAIT_IN_PLACE_MS = 12_000
const IN_PLACE_ATTEMPTS = 4
const IN_PLACE_DELAY_MS = 500
const ECHO_PREFIX = '[Intercom]'
/**
 * Every cache key the plugin uses. Hashes (hashOf, digest) stand in for emails, external IDs and group
 * keys, so the cache never holds them in clear.
 */
export const CACHE_KEYS = {
    /** A person's Intercom contact id ('' remembers "not found"). */
    contact: (identity: Identity) => `intercom:contact:${hashOf(identityText(identity))}`,
    /** The digest of what was last synced to a person's contact. */
    contactSync: (identity: Identity) => `intercom:contact-sync:${hashOf(identityText(identity))}`,
    /** A company's Intercom id, by company_id. */
    company: (companyId: string) => `intercom:company:${digest(companyId)}`,
    /** The digest of what was last synced to a company. */
    companySync: (companyId: string) => `intercom:company-sync:${digest(companyId)}`,
    /** Set once a contact is attached to a company. */
    attached: (identity: Identity, companyKey: string) =>
        `intercom:attached:${digest([identityText(identity), companyKey])}`,
    /** Set once a custom attribute exists in Intercom. */
    attribute: (model: 'contact' | 'company', name: string) => `intercom:attribute:${model}:${digest(name)}`,
    /** Until when Intercom asked every worker to wait (epoch ms). */
    backoff: 'intercom:backoff-until',
    /** The retry queue (a list). */
    queue: 'intercom:retry-queue',
    /** Where version 1.0 set retries aside during a drain; adopted back into the queue. */
    later: 'intercom:retry-later',
    /** The drain lock; its 10-minute slot changes the key, so a dead holder's lock cannot last. */
    drainLock: (now: number) => `intercom:drain-lock:${Math.floor(now / DRAIN_LOCK_SLOT_MS)}`,
}

// ---------------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------------

/** Values as PostHog stores them: every field is a string, or missing. */
export interface PluginConfig {
    intercomApiKey?: string
    region?: string
    /** Kept from PostHog's original Intercom app: `Yes` (or `True`, as its first version saved it) means EU. */
    useEuropeanDataStorage?: string
    triggeringEvents?: string
    contactIdentifier?: string
    emailProperty?: string
    ignoredEmailDomains?: string
    metadataProperties?: string
    revenueProperties?: string
    currencyProperty?: string
    defaultCurrency?: string
    eventNameMapping?: string
    contactSync?: string
    personProperties?: string
    updateLastSeen?: string
    externalId?: string
    externalIdProperty?: string
    createAttributes?: string
    createContacts?: string
    companyGroupType?: string
    companyProperties?: string
}

interface Rename {
    from: string
    to: string
}

/** Which identifier finds a person's Intercom contact. */
type IdentifierChoice = 'email' | 'external_id' | 'external_id_else_email'

/** How revenue becomes Intercom's monetary amount. */
interface MoneySettings {
    revenueKeys: string[]
    currencyKey: string
    /** Lower-case ISO code used when the event has no currency; null: such revenue stays a number. */
    defaultCurrency: string | null
}

export interface Settings {
    token: string
    region: Region
    baseUrl: string
    triggeringEvents: Set<string>
    eventNames: Map<string, string>
    identifier: IdentifierChoice
    emailProperty: string
    ignoredDomains: string[]
    /** `all`: every non-`$` property but the email, in the event's order; else the listed ones, in that order. */
    metadata: { all: boolean; fields: Rename[]; exclude?: string; money: MoneySettings }
    sync: SyncSettings
}

interface SyncSettings {
    contacts: 'off' | 'update' | 'create'
    /** Person properties sent as custom attributes, renamed `from:to`; `all`: every non-`$` one. */
    attributes: Rename[] | 'all'
    /** Set a synced contact's last_seen_at from the event time. */
    lastSeen: boolean
    externalId: { source: 'none' | 'distinct_id' | 'property'; property: string }
    createAttributes: boolean
    /** Create a contact when an event's person is unknown to Intercom. */
    createContacts: 'off' | 'lead' | 'user'
    /** The role of contacts created by the sync: the one chosen for unknown people, else user. */
    createRole: 'user' | 'lead'
    company: { groupType: string; attributes: Rename[] } | null
}

/** The two shapes a response comes in: a fetch Response, or the CDP executor's plain object. */
export interface HttpResponse {
    status: number
    headers: { get(name: string): string | null } | Record<string, string | string[] | undefined>
    json(): Promise<unknown>
    text(): Promise<string>
}
export interface HttpRequest {
    method: string
    headers: Record<string, string>
    body?: string
    timeout: number
    timeoutMs: number
}
export type FetchFn = (url: string, init: HttpRequest) => Promise<HttpResponse>

type Logger = Partial<ConsoleExtension> & Pick<ConsoleExtension, 'log'>

export interface Global {
    settings: Settings
    localCache: LocalCache
    backoffUntil: number
    inflight: Map<string, Promise<string | null>>
    /** Skip reasons already logged for an event name (bounded), so routine skips do not flood the logs. */
    logged: Set<string>
    /** When each kind of repeated failure was last logged. */
    lastLogged: Map<string, number>
    /** Null in PostHog's sandbox (no timers); set where the runtime has them. */
    sleep: ((ms: number) => Promise<void>) | null
    /** When onEvent may next look at the retry queue. */
    nextDrainAt: number
    /** True once 1.0's set-aside list was adopted into the queue by this worker. */
    adoptedSetAside: boolean
}

/** What the runtimes pass: plugin-server has `cache`, PostHog's current executor has `fetch`/`person`. */
export interface PluginMeta {
    config: PluginConfig
    global: Global
    cache?: CacheExtension
    fetch?: FetchFn
    logger?: Logger
    person?: { properties?: Properties } | null
}

type MetadataValue = string | number | { amount: number; currency: string } | { url: string; value: string }
type Metadata = Record<string, MetadataValue>

/**
 * POST /events without its contact: delivery adds the contact `id` (the one identifier that works for
 * leads too), or `user_id` (the external ID) for a user not yet looked up.
 */
interface EventDraft {
    event_name: string
    created_at: number
    metadata: Metadata
}

/** A person as Intercom knows them: by email, or by external ID (`external_id`, `user_id` in events). */
type Identity = { kind: 'email'; value: string } | { kind: 'user_id'; value: string }

/** What onEvent resolves to. PostHog ignores it; the local tools count it. */
export interface Outcome {
    /** `synced`: not a triggering event, but its person or company was synced. */
    status: 'delivered' | 'skipped' | 'queued' | 'synced'
    reason?: string
    contact?: SyncResult
    company?: SyncResult
    attached?: boolean
}

export interface DrainResult {
    delivered: number
    retried: number
    dropped: number
    droppedByReason: Record<string, number>
    remaining: number
}

interface Store {
    get(key: string): Promise<unknown>
    set(key: string, value: unknown, ttlSeconds: number): Promise<void>
}

interface Context {
    settings: Settings
    global: Global
    store: Store
    cache?: CacheExtension
    http: FetchFn
    log: (level: 'debug' | 'info' | 'warn' | 'error', message: string) => void
}

// ---------------------------------------------------------------------------------------------------
// Config: parsed and validated once, in setupPlugin
// ---------------------------------------------------------------------------------------------------

export class ConfigError extends Error {}

/** A text field of the form and the example its hint shows: a parse error quotes that same example. */
interface FieldSpec {
    label: string
    example: string
}

export const LIST_FIELDS = {
    triggeringEvents: { label: 'Triggering events', example: '$identify,signed_up' },
    ignoredEmailDomains: { label: 'Ignored email domains', example: 'posthog.com,example.com' },
    metadataProperties: { label: 'Event properties to send', example: 'plan,$current_url:url,revenue' },
    revenueProperties: { label: 'Revenue properties', example: 'revenue,price' },
    eventNameMapping: { label: 'Event name mapping', example: '$identify:identified,purchase:purchased' },
    personProperties: { label: 'Person properties to sync', example: 'plan:Plan name,seats' },
    companyProperties: { label: 'Company properties to sync', example: 'plan,employees:Employees' },
}

function fieldError(field: FieldSpec, problem: string): ConfigError {
    return new ConfigError(
        `${field.label}: ${problem}. Write it as a comma-separated list, e.g. "${field.example}".`
    )
}

/** `["a","b"]` or `{"a":"b"}`, but not an event name such as `[Intercom] event.created`. */
function looksLikeJson(text: string): boolean {
    if (/^(\[\s*"|\{\s*")/.test(text)) return true
    try {
        return typeof JSON.parse(text) === 'object' && /^[[{]/.test(text)
    } catch {
        return false
    }
}

/**
 * Comma-separated items, trimmed, empty ones dropped. JSON and one item a line are refused rather than
 * read as one odd item: PostHog stores the text exactly as typed.
 */
function splitList(value: string | undefined, field: FieldSpec): string[] {
    const text = (value ?? '').trim()
    if (looksLikeJson(text)) throw fieldError(field, 'this looks like JSON')
    if (/[\r\n]/.test(text)) throw fieldError(field, 'the items are on separate lines')
    return text
        .split(',')
        .map((item) => item.trim())
        .filter((item) => item.length > 0)
}

/** `a:b` pairs: exactly one `:`, both sides filled; a bare `a` maps to itself when `allowBare`. */
function parsePairs(value: string | undefined, field: FieldSpec, allowBare: boolean): Rename[] {
    return splitList(value, field).map((item) => {
        const sides = item.split(':').map((side) => side.trim())
        if (sides.length === 1 && allowBare) {
            return { from: item, to: item }
        }
        if (sides.length !== 2 || !sides[0] || !sides[1]) {
            const why =
                sides.length > 2 ? 'more than one ":"' : sides.length === 1 ? 'no ":"' : 'an empty side'
            throw fieldError(field, `"${item}" is not of the form from:to (it has ${why})`)
        }
        return { from: sides[0], to: sides[1] }
    })
}

/** Domains only: an email or a URL here would silently match nobody. */
function parseDomains(value: string | undefined): string[] {
    const field = LIST_FIELDS.ignoredEmailDomains
    return splitList(value, field).map((item) => {
        // The item is not quoted: it may be someone's email.
        if (item.includes('@')) throw fieldError(field, 'an item contains "@" (give the domain alone)')
        if (/[/\s]/.test(item))
            throw fieldError(field, 'an item is a URL or contains spaces (give the domain alone)')
        return item.toLowerCase().replace(/^\.+/, '')
    })
}

/** The original app's switch: its first version saved `True`/`False`, later ones `Yes`/`No`. */
const LEGACY_EU = new Set(['yes', 'true'])

export function parseRegion(region: string | undefined, legacyEurope: string | undefined): Region {
    const chosen = (region ?? '').trim().toUpperCase()
    if (chosen && !(chosen in REGION_HOSTS)) {
        throw new ConfigError(`Region must be US, EU or AU, not "${region}".`)
    }
    // Installs of the original app only had this switch; Region defaults to US in the form.
    const legacyEu = LEGACY_EU.has((legacyEurope ?? '').trim().toLowerCase())
    if (legacyEu && (chosen === '' || chosen === 'US')) {
        return 'EU'
    }
    return (chosen || 'US') as Region
}

/** Choice fields: the label shown in PostHog → the value used here. Unknown labels are a config error. */
function parseChoice<T>(
    value: string | undefined,
    field: string,
    choices: Record<string, T>,
    fallback: T
): T {
    const label = (value ?? '').trim().toLowerCase()
    if (!label) return fallback
    if (!(label in choices)) {
        throw new ConfigError(`${field} must be one of ${Object.keys(choices).join(', ')}, not "${value}".`)
    }
    return choices[label]
}

const YES_NO = { yes: true, no: false, true: true, false: false } as const

/** `EUR` → `eur`; empty → null (revenue without a currency stays a number). */
function parseCurrency(value: string | undefined): string | null {
    const code = (value ?? '').trim()
    if (!code) return null
    if (!/^[A-Za-z]{3}$/.test(code)) {
        throw new ConfigError(`Default currency: "${code}" is not a 3-letter ISO currency code, e.g. "EUR".`)
    }
    return code.toLowerCase()
}

function parseSync(config: PluginConfig): SyncSettings {
    // `update existing contacts`/`create or update contacts`: this plugin's earlier labels, still understood.
    const contactSync = parseChoice(
        config.contactSync,
        'Contact sync',
        {
            off: 'off',
            on: 'on',
            'update existing contacts': 'update',
            'create or update contacts': 'create',
        } as const,
        'off'
    )
    const createContacts = parseChoice(
        config.createContacts,
        'Create contacts for unknown people',
        { off: 'off', 'as lead': 'lead', 'as user': 'user' } as const,
        'off'
    )
    const source = parseChoice(
        config.externalId,
        'External ID',
        { none: 'none', distinct_id: 'distinct_id', property: 'property' } as const,
        'none'
    )
    const property = (config.externalIdProperty ?? '').trim()
    if (source === 'property' && !property) {
        throw new ConfigError(
            'External ID is set to "property": name the property in "External ID property", e.g. "account_id".'
        )
    }
    const groupType = (config.companyGroupType ?? '').trim()
    const personList = (config.personProperties ?? '').trim()
    return {
        contacts: contactSync === 'on' ? (createContacts === 'off' ? 'update' : 'create') : contactSync,
        attributes: personList === '*' ? 'all' : parsePairs(personList, LIST_FIELDS.personProperties, true),
        lastSeen: parseChoice(config.updateLastSeen, 'Update last seen', YES_NO, true),
        externalId: { source, property },
        createAttributes: parseChoice(
            config.createAttributes,
            'Create missing custom attributes',
            YES_NO,
            false
        ),
        createContacts,
        createRole: createContacts === 'off' ? 'user' : createContacts,
        company: groupType
            ? {
                  groupType,
                  attributes: parsePairs(config.companyProperties, LIST_FIELDS.companyProperties, true),
              }
            : null,
    }
}

function parseIdentifier(config: PluginConfig, sync: SyncSettings): IdentifierChoice {
    const identifier = parseChoice(
        config.contactIdentifier,
        'Match Intercom contacts by',
        {
            email: 'email',
            'external id': 'external_id',
            'external id, else email': 'external_id_else_email',
        } as const,
        'email'
    )
    if (identifier !== 'email' && sync.externalId.source === 'none') {
        throw new ConfigError(
            'Match Intercom contacts by is set to an external ID: set "External ID" to distinct_id or property.'
        )
    }
    return identifier
}

export function parseConfig(config: PluginConfig): Settings {
    const token = (config.intercomApiKey ?? '').trim()
    if (!token) {
        throw new ConfigError(
            'Intercom API key is missing. Create an access token in Intercom (Settings → Integrations → Developer Hub → your app → Authentication) and paste it into "Intercom API key".'
        )
    }
    if (/\s/.test(token)) {
        throw new ConfigError(
            'Intercom API key contains spaces: paste the access token alone, without "Bearer".'
        )
    }
    const sync = parseSync(config)
    const triggeringEvents = new Set(splitList(config.triggeringEvents, LIST_FIELDS.triggeringEvents))
    // With contact or company sync on, an empty list is fine: only people and companies are synced.
    if (triggeringEvents.size === 0 && sync.contacts === 'off' && !sync.company) {
        throw new ConfigError(
            `Triggering events is empty: list the PostHog events to send, e.g. "${LIST_FIELDS.triggeringEvents.example}".`
        )
    }
    const region = parseRegion(config.region, config.useEuropeanDataStorage)
    const metadataList = (config.metadataProperties ?? '').trim()
    const emailProperty = (config.emailProperty ?? '').trim() || 'email'
    const money: MoneySettings = {
        // Missing (an install from before these fields) means the defaults; an emptied field means none.
        revenueKeys: splitList(config.revenueProperties ?? 'revenue,price', LIST_FIELDS.revenueProperties),
        currencyKey: (config.currencyProperty ?? '').trim() || 'currency',
        defaultCurrency: parseCurrency(config.defaultCurrency),
    }
    return {
        token,
        region,
        baseUrl: REGION_HOSTS[region],
        triggeringEvents,
        eventNames: new Map(
            parsePairs(config.eventNameMapping, LIST_FIELDS.eventNameMapping, false).map((r) => [
                r.from,
                r.to,
            ])
        ),
        identifier: parseIdentifier(config, sync),
        emailProperty,
        ignoredDomains: parseDomains(config.ignoredEmailDomains),
        metadata:
            metadataList === '*'
                ? { all: true, fields: [], exclude: emailProperty, money } // Intercom has the email already
                : {
                      all: false,
                      fields: parsePairs(metadataList, LIST_FIELDS.metadataProperties, true),
                      money,
                  },
        sync,
    }
}

// ---------------------------------------------------------------------------------------------------
// Filtering and identity: who the event is about, by email or by external ID
// ---------------------------------------------------------------------------------------------------

/** Local part without spaces or `@`; a domain of letters/digits/hyphens with a 2+ letter TLD. */
const EMAIL_PATTERN =
    /^[^\s@<>()[\]\\,;:"]{1,64}@(?:[\p{L}\p{N}](?:[\p{L}\p{N}-]*[\p{L}\p{N}])?\.)+\p{L}{2,}$/u

export function normalizeEmail(value: unknown): string | null {
    if (typeof value !== 'string' || value.length > 320) {
        return null
    }
    const email = value.trim().toLowerCase()
    return email.length <= 254 && EMAIL_PATTERN.test(email) ? email : null
}

function propertyOf(source: unknown, key: string): unknown {
    return source !== null && typeof source === 'object' ? (source as Properties)[key] : undefined
}

/** Where a person's value can be, in order: the event property, `$set`, `$set_once`, the person. */
function personValues(event: ProcessedPluginEvent, person: PluginMeta['person'], key: string): unknown[] {
    const props = event.properties ?? {}
    return [
        props[key],
        propertyOf(event.$set, key),
        propertyOf(props.$set, key),
        propertyOf(event.$set_once, key),
        propertyOf(props.$set_once, key),
        propertyOf(person?.properties, key),
    ]
}

/** Looks in the places an email can be, then the distinct ID; an invalid value in one does not stop the search. */
export function findEmail(
    event: ProcessedPluginEvent,
    person: PluginMeta['person'],
    key: string
): string | null {
    for (const candidate of [...personValues(event, person, key), event.distinct_id]) {
        const email = normalizeEmail(candidate)
        if (email) {
            return email
        }
    }
    return null
}

/** PostHog's anonymous ids are device ids: they must not become Intercom external ids. */
function isAnonymousId(event: ProcessedPluginEvent): boolean {
    const props = event.properties ?? {}
    if (event.event === '$identify') return false
    return (
        props.$is_identified === false ||
        props.$device_id === event.distinct_id ||
        props.$anon_distinct_id === event.distinct_id
    )
}

function externalIdValue(raw: unknown): string | null {
    return (typeof raw === 'string' && raw.trim()) || (typeof raw === 'number' && Number.isFinite(raw))
        ? truncate(String(raw).trim())
        : null
}

/** Intercom's external ID of the person: a non-anonymous distinct ID, or the chosen property. */
function findExternalId(
    event: ProcessedPluginEvent,
    person: PluginMeta['person'],
    externalId: SyncSettings['externalId']
): string | null {
    if (externalId.source === 'none') return null
    if (externalId.source === 'distinct_id') {
        return isAnonymousId(event) ? null : externalIdValue(event.distinct_id)
    }
    for (const candidate of personValues(event, person, externalId.property)) {
        const value = externalIdValue(candidate)
        if (value) return value
    }
    return null
}

/** `example.com` also ignores `mail.example.com`; emails arrive lower-cased. */
export function isIgnoredDomain(email: string, ignoredDomains: string[]): boolean {
    const domain = email.slice(email.lastIndexOf('@') + 1)
    return ignoredDomains.some((ignored) => domain === ignored || domain.endsWith(`.${ignored}`))
}

/** The person an event is about: how Intercom finds them, and their email when known. */
type Person = { identity: Identity; email: string | null } | { skip: string }

const NO_IDENTIFIER: Record<IdentifierChoice, string> = {
    email: 'no valid email',
    external_id: 'no external ID',
    external_id_else_email: 'no external ID nor valid email',
}

/** By the configured identifier; people of ignored domains are never sent, whatever identifies them. */
export function findPerson(
    event: ProcessedPluginEvent,
    person: PluginMeta['person'],
    settings: Settings
): Person {
    const email = findEmail(event, person, settings.emailProperty)
    if (email && isIgnoredDomain(email, settings.ignoredDomains)) {
        return { skip: 'ignored email domain' }
    }
    const externalId =
        settings.identifier === 'email' ? null : findExternalId(event, person, settings.sync.externalId)
    if (externalId) {
        return { identity: { kind: 'user_id', value: externalId }, email }
    }
    if (email && settings.identifier !== 'external_id') {
        return { identity: { kind: 'email', value: email }, email }
    }
    return { skip: NO_IDENTIFIER[settings.identifier] }
}

/**
 * An identity as one string, for cache keys and the retry queue: the email itself (as before external
 * IDs existed, so cached lookups and queued items stay valid), or `user_id:<id>`. Emails hold no `:`.
 */
export function identityText(identity: Identity): string {
    return identity.kind === 'email' ? identity.value : `user_id:${identity.value}`
}

export function identityFromText(text: string | null): Identity | null {
    if (text === null) return null
    return text.startsWith('user_id:')
        ? { kind: 'user_id', value: text.slice('user_id:'.length) }
        : { kind: 'email', value: text }
}

// ---------------------------------------------------------------------------------------------------
// Logging helpers: one line per reason, never personal data
// ---------------------------------------------------------------------------------------------------

function makeLog(meta: PluginMeta): Context['log'] {
    const logger: Logger = meta.logger ?? console
    return (level, message) => {
        const write = (level === 'info' ? (logger.info ?? logger.log) : logger[level]) ?? logger.log
        write.call(logger, message)
    }
}

const LOGGED_ONCE_MAX = 1000

function firstTime(global: Global, key: string): boolean {
    if (global.logged.has(key) || global.logged.size >= LOGGED_ONCE_MAX) return false
    global.logged.add(key)
    return true
}

/** During an outage or a rate-limit storm every event fails alike: one line per kind per 10 s tells it. */
const QUIET_MS = 10_000
const QUIET_NOTE = 'more like it within 10 s are not logged; runEveryMinute logs counts'

function notRecentlyLogged(global: Global, kind: string): boolean {
    const now = Date.now()
    if (now - (global.lastLogged.get(kind) ?? -Infinity) < QUIET_MS) return false
    global.lastLogged.set(kind, now)
    return true
}

/** An event name fit for a log line (names are not personal data, but may be huge or not strings). */
function eventName(event: ProcessedPluginEvent): string {
    return String(event.event).slice(0, 100)
}

function eventLabel(event: ProcessedPluginEvent): string {
    return typeof event.uuid === 'string' && event.uuid ? event.uuid.slice(0, 64) : '(no uuid)'
}

// ---------------------------------------------------------------------------------------------------
// Contact resolution: email or external ID → Intercom contact id, cached in meta.cache (Redis,
// shared by workers) when present, else a bounded in-process LRU
// ---------------------------------------------------------------------------------------------------

class LocalCache {
    private entries = new Map<string, { value: unknown; expiresAt: number }>()
    constructor(private maxEntries: number) {}

    get(key: string): unknown {
        const entry = this.entries.get(key)
        if (!entry || entry.expiresAt <= Date.now()) {
            this.entries.delete(key)
            return null
        }
        this.entries.delete(key) // re-insert: Map order is the LRU order
        this.entries.set(key, entry)
        return entry.value
    }

    set(key: string, value: unknown, ttlSeconds: number): void {
        this.entries.delete(key)
        this.entries.set(key, { value, expiresAt: Date.now() + ttlSeconds * 1000 })
        if (this.entries.size > this.maxEntries) {
            this.entries.delete(this.entries.keys().next().value as string)
        }
    }
}

/** Redis may be down: a failed read is a miss and a failed write is skipped, never a lost event. */
function sharedStore(cache: CacheExtension): Store {
    return {
        get: (key) => cache.get(key, null).catch(() => null),
        set: (key, value, ttl) => cache.set(key, value, ttl).catch(() => undefined),
    }
}

function localStore(cache: LocalCache): Store {
    return {
        get: async (key) => cache.get(key),
        set: async (key, value, ttl) => cache.set(key, value, ttl),
    }
}

/** A short sha256 of a text: cache keys hold this, never an email or a group key. */
function hashOf(text: string): string {
    return createHash('sha256').update(text).digest('hex').slice(0, 32)
}

function digest(value: unknown): string {
    return hashOf(JSON.stringify(value))
}

interface ContactSummary {
    id: string
    role?: string
    updated_at?: number
}

/** Emails are not unique in Intercom: prefer a user over a lead, then the most recently updated. */
export function pickContact(contacts: unknown): string | null {
    const list = (Array.isArray(contacts) ? contacts : []).filter(
        (c): c is ContactSummary => typeof propertyOf(c, 'id') === 'string'
    )
    const rank = (c: ContactSummary) => (c.role === 'user' ? 1 : 0)
    list.sort((a, b) => rank(b) - rank(a) || (Number(b.updated_at) || 0) - (Number(a.updated_at) || 0))
    return list[0]?.id ?? null
}

async function searchContact(ctx: Context, identity: Identity): Promise<string | null> {
    const data = await callIntercom(ctx, 'POST', '/contacts/search', {
        query: {
            field: identity.kind === 'email' ? 'email' : 'external_id',
            operator: '=',
            value: identity.value,
        },
        pagination: { per_page: 50 },
    })
    return pickContact(propertyOf(data, 'data'))
}

async function searchAndRemember(ctx: Context, identity: Identity, key: string): Promise<string | null> {
    const id = await searchContact(ctx, identity)
    await ctx.store.set(key, id ?? '', id ? CONTACT_TTL_SECONDS : NOT_FOUND_TTL_SECONDS)
    return id
}

/** Cached lookup; concurrent lookups of one person in this worker share one search. */
async function resolveContact(ctx: Context, identity: Identity, fresh = false): Promise<string | null> {
    const key = CACHE_KEYS.contact(identity)
    if (!fresh) {
        const cached = await ctx.store.get(key)
        if (typeof cached === 'string') {
            return cached || null // '' remembers "not found"
        }
    }
    const pending = ctx.global.inflight.get(key)
    if (pending) {
        return pending
    }
    const lookup = searchAndRemember(ctx, identity, key)
    ctx.global.inflight.set(key, lookup)
    try {
        return await lookup
    } finally {
        ctx.global.inflight.delete(key)
    }
}

/** "A contact matching those details already exists with id=…": the id of the winner of a race. */
function conflictId(error: unknown): string | null {
    const match =
        error instanceof IntercomError && error.status === 409
            ? /id=([A-Za-z0-9_-]+)/.exec(error.message)
            : null
    return match ? match[1] : null
}

/** The fields of POST /contacts that say who the contact is. */
function identityFields(identity: Identity): ContactAttributes {
    return identity.kind === 'email' ? { email: identity.value } : { external_id: identity.value }
}

/**
 * POST /contacts; a 409 (a race, or search lag) gives the existing id, which is then updated. A 409
 * without an id names no contact to update: retried later, when the search has caught up.
 */
async function createContact(
    ctx: Context,
    identity: Identity,
    role: 'user' | 'lead',
    attributes: ContactAttributes
): Promise<string> {
    try {
        const body = { role, ...attributes, ...identityFields(identity) }
        const created = await callIntercom(ctx, 'POST', '/contacts', body)
        const id = propertyOf(created, 'id')
        if (typeof id !== 'string')
            throw new IntercomError('transient', 'Intercom created a contact but returned no id')
        return id
    } catch (error) {
        const existing = conflictId(error)
        if (!existing && error instanceof IntercomError && error.status === 409) {
            throw new IntercomError('transient', `${error.message} (no contact id given: retried later)`, 409)
        }
        if (!existing) throw error
        if (Object.keys(attributes).length > 0)
            await callIntercom(ctx, 'PUT', `/contacts/${existing}`, attributes)
        return existing
    }
}

/** Caches a contact id at once, so the events right after do not wait for Intercom's search. */
async function rememberContact(ctx: Context, identity: Identity, id: string): Promise<void> {
    await ctx.store.set(CACHE_KEYS.contact(identity), id, CONTACT_TTL_SECONDS)
}

/**
 * Runs `action` on the cached contact id. A 404 means that contact was deleted or merged: the person is
 * looked up once more and `action` runs on the new id. False when Intercom has no contact for them.
 */
async function withContact(
    ctx: Context,
    identity: Identity,
    cachedId: string,
    action: (id: string) => Promise<unknown>
): Promise<boolean> {
    try {
        await action(cachedId)
        return true
    } catch (error) {
        if (!(error instanceof IntercomError) || error.kind !== 'not_found') throw error
    }
    const freshId = await resolveContact(ctx, identity, true)
    if (!freshId || freshId === cachedId) return false
    await action(freshId)
    return true
}

// ---------------------------------------------------------------------------------------------------
// Payload: pure functions from a PostHog event to Intercom's POST /events body
// ---------------------------------------------------------------------------------------------------

const MAX_UNIX_SECONDS = 9_999_999_999

/** Integer Unix seconds, or null. Numbers (and digit strings) above 1e11 are taken as milliseconds. */
export function toUnixSeconds(value: unknown): number | null {
    let ms: number
    if (typeof value === 'number') {
        ms = value > 1e11 ? value : value * 1000
    } else if (typeof value === 'string' && /^\s*\d+(\.\d+)?\s*$/.test(value)) {
        return toUnixSeconds(Number(value))
    } else if (typeof value === 'string') {
        // A date-time without a zone (as ClickHouse writes it) is UTC, never the machine's local time.
        ms = Date.parse(
            /^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(:\d{2}(\.\d+)?)?$/.test(value.trim())
                ? `${value.trim()}Z`
                : value
        )
    } else if (value instanceof Date) {
        ms = value.getTime()
    } else {
        return null
    }
    const seconds = Math.floor(ms / 1000)
    // Before 1970 or past 2286 (ten digits) is no real event time, and Intercom refuses it.
    return Number.isFinite(seconds) && seconds >= 0 && seconds <= MAX_UNIX_SECONDS ? seconds : null
}

function truncate(text: string): string {
    if (text.length <= MAX_STRING_LENGTH) {
        return text
    }
    const cut = text.slice(0, MAX_STRING_LENGTH)
    // Do not leave half of a surrogate pair at the end.
    return /[\uD800-\uDBFF]$/.test(cut) ? cut.slice(0, -1) : cut
}

/** Intercom keys may not contain `.` or `$`. */
function cleanKey(key: string): string {
    return key.replace(/\$/g, '').replace(/\./g, '_').trim()
}

/** Minor units per major unit where it is not 100 (ISO 4217). */
const CURRENCY_EXPONENTS: Record<string, number> = {
    bif: 0, clp: 0, djf: 0, gnf: 0, isk: 0, jpy: 0, kmf: 0, krw: 0, pyg: 0, rwf: 0, ugx: 0, vnd: 0, vuv: 0,
    xaf: 0, xof: 0, xpf: 0, bhd: 3, iqd: 3, jod: 3, kwd: 3, lyd: 3, omr: 3, tnd: 3,
} // prettier-ignore

/**
 * Revenue with a currency → Intercom's monetary amount, in minor units, rounded. Intercom documents a
 * positive integer: 0 or less is sent as a plain number, and a value that is not a number is left alone.
 */
export function revenueValue(value: unknown, currency: unknown): MetadataValue | undefined {
    const amount = finiteNumber(value)
    const code = currencyCode(currency)
    if (amount === null || code === null) {
        return undefined
    }
    const minor = Math.round(amount * 10 ** (CURRENCY_EXPONENTS[code] ?? 2))
    if (minor <= 0) {
        return amount
    }
    return Number.isSafeInteger(minor) ? { amount: minor, currency: code } : undefined
}

/** A number, or a numeric string, that is finite; else null. */
function finiteNumber(value: unknown): number | null {
    const number = typeof value === 'string' && value.trim() !== '' ? Number(value) : value
    return typeof number === 'number' && Number.isFinite(number) ? number : null
}

/** A 3-letter ISO code, lower-cased as Intercom shows it; else null. */
function currencyCode(currency: unknown): string | null {
    const code = typeof currency === 'string' ? currency.trim().toLowerCase() : ''
    return /^[a-z]{3}$/.test(code) ? code : null
}

function hasExactKeys(value: object, keys: string[]): boolean {
    const own = Object.keys(value)
    return own.length === keys.length && keys.every((key) => own.includes(key))
}

function isHttpUrl(text: unknown): text is string {
    if (typeof text !== 'string' || text.length > 2048) return false
    try {
        return ['http:', 'https:'].includes(new URL(text).protocol)
    } catch {
        return false
    }
}

/**
 * A value already shaped as one of Intercom's object types, validated: `{amount, currency}` (amount in
 * minor units) or `{url, value}`. Null: that shape but invalid, so dropped. Undefined: another object.
 */
export function shapedValue(value: object): MetadataValue | null | undefined {
    if (hasExactKeys(value, ['amount', 'currency'])) {
        const { amount, currency } = value as { amount: unknown; currency: unknown }
        const minor = finiteNumber(amount)
        const code = currencyCode(currency)
        if (minor === null || code === null) return null
        // Already in minor units: rounded only; 0 or less is a plain number, as for revenue.
        if (Math.round(minor) <= 0) return minor
        return Number.isSafeInteger(Math.round(minor)) ? { amount: Math.round(minor), currency: code } : null
    }
    if (hasExactKeys(value, ['url', 'value'])) {
        const { url, value: label } = value as { url: unknown; value: unknown }
        return isHttpUrl(url) && typeof label === 'string' && label.trim()
            ? { url, value: truncate(label) }
            : null
    }
    return undefined
}

function compactJson(value: object): string | undefined {
    try {
        const json = JSON.stringify(value)
        // A cut JSON document is useless: longer ones are dropped.
        return json !== undefined && json.length <= MAX_STRING_LENGTH ? json : undefined
    } catch {
        return undefined // too deep to serialise
    }
}

/** One metadata value in a type Intercom accepts, or undefined to drop it. */
function metadataValue(key: string, value: unknown): MetadataValue | undefined {
    if (key.endsWith('_date')) {
        return toUnixSeconds(value) ?? undefined
    }
    switch (typeof value) {
        case 'string':
            return truncate(value)
        case 'number':
            return Number.isFinite(value) ? value : undefined
        case 'boolean':
            return String(value)
        case 'object': {
            if (value === null) return undefined
            const shaped = Array.isArray(value) ? undefined : shapedValue(value)
            return shaped === undefined ? compactJson(value) : (shaped ?? undefined)
        }
        default:
            return undefined
    }
}

function* metadataSources(properties: Properties, spec: Settings['metadata']): Generator<Rename> {
    if (!spec.all) {
        yield* spec.fields
        return
    }
    for (const key of Object.keys(properties)) {
        if (!key.startsWith('$') && key !== spec.exclude) {
            yield { from: key, to: key }
        }
    }
}

/** Flat metadata, at most 10 keys in the configured order; a new object, inputs untouched. */
export function buildMetadata(properties: Properties, spec: Settings['metadata']): Metadata {
    const { revenueKeys, currencyKey, defaultCurrency } = spec.money
    const currency = properties[currencyKey] ?? defaultCurrency
    const revenue = (key: string) =>
        revenueKeys.includes(key) && Object.prototype.hasOwnProperty.call(properties, key)
            ? revenueValue(properties[key], currency)
            : undefined
    const hasMoney = revenueKeys.some((key) => typeof revenue(key) === 'object')
    const entries: [string, MetadataValue][] = []
    const seen = new Set<string>()
    for (const { from, to } of metadataSources(properties, spec)) {
        const key = cleanKey(to)
        if (!key || seen.has(key) || !Object.prototype.hasOwnProperty.call(properties, from)) {
            continue
        }
        if (spec.all && from === currencyKey && hasMoney) {
            continue // carried by the monetary amount, and a key slot is precious
        }
        const converted = revenue(from) ?? metadataValue(key, properties[from])
        if (converted === undefined) {
            continue
        }
        seen.add(key)
        entries.push([key, converted])
        if (entries.length === MAX_METADATA_KEYS) {
            break
        }
    }
    // fromEntries defines own properties, so a `__proto__` key cannot reach the prototype.
    return Object.fromEntries(entries)
}

/** Everything of POST /events but the contact id, which is resolved (and may be re-resolved) later. */
export function buildEventDraft(
    event: ProcessedPluginEvent,
    createdAt: number,
    settings: Settings
): EventDraft {
    return {
        event_name: settings.eventNames.get(event.event) ?? event.event,
        created_at: createdAt,
        metadata: buildMetadata(event.properties ?? {}, settings.metadata),
    }
}

// ---------------------------------------------------------------------------------------------------
// Delivery: one path for first attempts and for retries from the queue
// ---------------------------------------------------------------------------------------------------

/** Posts the event to the person's contact (created first when that option is on). */
async function deliver(ctx: Context, identity: Identity, draft: EventDraft): Promise<Outcome> {
    if (identity.kind === 'user_id' && (await postToUser(ctx, identity.value, draft))) {
        return { status: 'delivered' }
    }
    const cachedId = (await resolveContact(ctx, identity)) ?? (await createMissingContact(ctx, identity))
    const post = (id: string) => callIntercom(ctx, 'POST', '/events', { ...draft, id })
    if (cachedId && (await withContact(ctx, identity, cachedId, post))) {
        return { status: 'delivered' }
    }
    return noContact(ctx, draft.created_at)
}

/**
 * An external ID designates a user directly (`user_id`): one call, no search. False when the contact id
 * is already cached (a lead found before) or Intercom has no user with it (404): leads need their `id`,
 * which the search then finds.
 */
async function postToUser(ctx: Context, userId: string, draft: EventDraft): Promise<boolean> {
    const cached = await ctx.store.get(CACHE_KEYS.contact({ kind: 'user_id', value: userId }))
    if (typeof cached === 'string' && cached) return false
    try {
        await callIntercom(ctx, 'POST', '/events', { ...draft, user_id: userId })
        return true
    } catch (error) {
        if (error instanceof IntercomError && error.kind === 'not_found') return false
        throw error
    }
}

/** With "Create contacts for unknown people" on, the event of a new person lands on the first try. */
async function createMissingContact(ctx: Context, identity: Identity): Promise<string | null> {
    const role = ctx.settings.sync.createContacts
    if (role === 'off') return null
    const id = await createContact(ctx, identity, role, {})
    await rememberContact(ctx, identity, id)
    return id
}

function noContact(ctx: Context, createdAt: number): Outcome {
    // Only a queue retries minutes later; PostHog's own retries (seconds apart) cannot outwait the lag.
    if (ctx.cache && Date.now() / 1000 - createdAt < SEARCH_LAG_SECONDS) {
        // Intercom's search lags new contacts by minutes: a recent event is worth another try.
        throw new IntercomError(
            'transient',
            'no Intercom contact for this person yet (Intercom search lags new contacts)'
        )
    }
    return { status: 'skipped', reason: 'no Intercom contact' }
}

// ---------------------------------------------------------------------------------------------------
// Transport: every Intercom call goes through callIntercom; the status policy and FAILURE_POLICY are here
// ---------------------------------------------------------------------------------------------------

export type FailureKind = 'transient' | 'rate_limited' | 'auth' | 'not_found' | 'invalid' | 'permanent'

class IntercomError extends Error {
    constructor(
        readonly kind: FailureKind,
        message: string,
        readonly status?: number
    ) {
        super(message)
        this.name = 'IntercomError'
    }
}

/**
 * Status policy (https://developers.intercom.com/docs/references/rest-api/errors/http-responses):
 * 2xx ok · 429 rate limited (back off until X-RateLimit-Reset) · 408, 423, 5xx but 501, network
 * errors and timeouts transient · 401/403 the API key · 404 not found · 422 invalid · other 4xx permanent.
 */
export function classifyStatus(status: number): FailureKind | 'ok' {
    if (status >= 200 && status < 300) return 'ok'
    if (status === 429) return 'rate_limited'
    if (status === 408 || status === 423 || (status >= 500 && status !== 501)) return 'transient'
    if (status === 401 || status === 403) return 'auth'
    if (status === 404) return 'not_found'
    if (status === 422) return 'invalid'
    return 'permanent'
}

/** What the plugin does about a failure of one kind. */
export interface FailureReaction {
    /**
     * Tried again inside the call where nothing parks failed events (no meta.cache): `wait` for the
     * rate-limit reset (needs timers), or try `again` (without timers, once and at once).
     */
    inPlace: 'wait' | 'again' | null
    /**
     * Then: `park` a delivery in the retry queue (else, as for a sync, PostHog's retries via RetryError),
     * or `report` it: an error that tells the user what to change, never retried.
     */
    then: 'park' | 'report'
    /** What it means for an event already in the queue: wait for the reset, retry later, or drop it. */
    queued: 'backoff' | 'retry' | 'drop'
}

/** The reaction to each failure kind, in one place: callIntercom, delivery, sync and the queue follow it. */
export const FAILURE_POLICY: Record<FailureKind, FailureReaction> = {
    transient: { inPlace: 'again', then: 'park', queued: 'retry' },
    rate_limited: { inPlace: 'wait', then: 'park', queued: 'backoff' },
    auth: { inPlace: null, then: 'report', queued: 'drop' },
    not_found: { inPlace: null, then: 'report', queued: 'drop' },
    invalid: { inPlace: null, then: 'report', queued: 'drop' },
    permanent: { inPlace: null, then: 'report', queued: 'drop' },
}

/** Intercom's words for a custom attribute it does not have. */
const MISSING_ATTRIBUTE =
    /attribute\b.*\b(does not exist|doesn't exist|not found)|unknown (custom )?attribute/i

/**
 * The status policy, except that a 4xx whose message says a custom attribute does not exist is that
 * (`invalid`), whatever the status, 401 included: not a bad API key, and not worth a retry.
 */
function classifyResponse(status: number, body: unknown): FailureKind | 'ok' {
    const kind = classifyStatus(status)
    const clientError = kind === 'auth' || kind === 'not_found' || kind === 'permanent'
    return clientError && MISSING_ATTRIBUTE.test(intercomMessage(body)) ? 'invalid' : kind
}

function readHeader(headers: HttpResponse['headers'] | undefined, name: string): string | null {
    if (!headers) return null
    if (typeof headers.get === 'function') {
        return (headers as { get(name: string): string | null }).get(name)
    }
    const value = (headers as Record<string, string | string[] | undefined>)[name.toLowerCase()]
    return Array.isArray(value) ? (value[0] ?? null) : (value ?? null)
}

/** Intercom's own words, with anything that looks like an email masked. */
function intercomMessage(body: unknown): string {
    const errors = propertyOf(body, 'errors')
    const first = Array.isArray(errors) ? errors[0] : undefined
    const message = propertyOf(first, 'message') ?? propertyOf(body, 'message')
    return typeof message === 'string' ? message.replace(/\S+@\S+/g, '<email>').slice(0, 300) : 'no message'
}

async function readBody(response: HttpResponse): Promise<unknown> {
    try {
        const text = await response.text()
        return text ? JSON.parse(text) : null
    } catch {
        return null
    }
}

/** undici rejects with a TimeoutError (or AbortError), node-fetch with a FetchError of type request-timeout. */
export function isTimeout(error: unknown): boolean {
    const name = String(propertyOf(error, 'name') ?? '')
    const type = String(propertyOf(error, 'type') ?? '')
    return name === 'TimeoutError' || name === 'AbortError' || type === 'request-timeout'
}

/** Until X-RateLimit-Reset; one window when the header is missing or odd; never more than a minute. */
export function backoffUntil(resetHeader: string | null, now: number): number {
    const reset = resetHeader === null || resetHeader.trim() === '' ? NaN : Number(resetHeader) * 1000
    if (!Number.isFinite(reset)) return now + DEFAULT_BACKOFF_MS
    // A reset that has just passed (the header has whole seconds): the new window is open, pause briefly.
    return Math.min(Math.max(reset, now + 1000), now + MAX_BACKOFF_MS)
}

/**
 * True when the rate-limit window is (nearly) spent: waiting for its reset beats collecting 429s.
 * The 2% margin (33 calls of Intercom's 1,666) covers the requests other workers already have in flight.
 */
export function windowNearlySpent(headers: HttpResponse['headers']): boolean {
    const remaining = Number(readHeader(headers, 'x-ratelimit-remaining') ?? NaN)
    const limit = Number(readHeader(headers, 'x-ratelimit-limit') ?? NaN)
    return Number.isFinite(remaining) && remaining <= (Number.isFinite(limit) ? Math.floor(limit / 50) : 0)
}

/** This worker's backoff, and the one other workers shared through meta.cache when there is one. */
async function rateLimitedUntil(ctx: Context): Promise<number> {
    const shared = ctx.cache ? Number(await ctx.store.get(CACHE_KEYS.backoff)) || 0 : 0
    return Math.max(ctx.global.backoffUntil, shared)
}

async function rememberBackoff(ctx: Context, until: number): Promise<void> {
    if (until > ctx.global.backoffUntil) {
        ctx.global.backoffUntil = until
        if (ctx.cache) {
            await ctx.store.set(CACHE_KEYS.backoff, until, Math.ceil((until - Date.now()) / 1000) + 1)
        }
    }
}

async function send(ctx: Context, method: string, path: string, body: unknown): Promise<HttpResponse> {
    const init: HttpRequest = {
        method,
        headers: {
            Authorization: `Bearer ${ctx.settings.token}`,
            Accept: 'application/json',
            'Content-Type': 'application/json',
            'Intercom-Version': API_VERSION,
        },
        body: body === undefined ? undefined : JSON.stringify(body),
        // node-fetch 2 reads `timeout`, PostHog's current executor reads `timeoutMs`.
        timeout: REQUEST_TIMEOUT_MS,
        timeoutMs: REQUEST_TIMEOUT_MS,
    }
    const url = ctx.settings.baseUrl + path
    try {
        return await ctx.http(url, init)
    } catch (error) {
        if (isTimeout(error)) {
            throw new IntercomError(
                'transient',
                `Intercom did not answer ${method} ${path} within ${REQUEST_TIMEOUT_MS} ms`
            )
        }
        // One immediate retry for a dropped connection: harmless, since every call here is idempotent.
        try {
            return await ctx.http(url, init)
        } catch {
            throw new IntercomError(
                'transient',
                `network error on ${method} ${path}: ${propertyOf(error, 'code') ?? 'connection failed'}`
            )
        }
    }
}

/** PostHog's "test function" answers every non-GET request itself, with this body. */
function isTestFunctionAnswer(method: string, body: unknown): boolean {
    return (
        method !== 'GET' &&
        propertyOf(body, 'status') === 'OK' &&
        propertyOf(body, 'message') === 'Test function' &&
        propertyOf(body, 'type') === undefined
    )
}

/** Raised when PostHog's test function, not Intercom, answered: the run ends with a clear outcome. */
class TestFunctionRun extends Error {}

/**
 * Where nothing parks a failed event (no meta.cache: PostHog's current executor, which has timers),
 * a 429 is waited out and a transient failure tried again, in place and bounded.
 */
function mayRetryInPlace(ctx: Context, kind: FailureKind, attempt: number): boolean {
    const inPlace = FAILURE_POLICY[kind].inPlace
    if (ctx.cache || attempt >= IN_PLACE_ATTEMPTS || !inPlace) return false
    // Without timers, one immediate retry is the only second chance such a runtime gives.
    return ctx.global.sleep !== null || (inPlace === 'again' && attempt === 1)
}

/** Waits for the rate-limit reset where it may (see mayRetryInPlace); otherwise refuses the call. */
async function waitOutBackoff(ctx: Context): Promise<void> {
    const wait = (await rateLimitedUntil(ctx)) - Date.now()
    if (wait <= 0) return
    const sleep = ctx.cache ? null : ctx.global.sleep
    if (sleep && wait <= MAX_WAIT_IN_PLACE_MS) {
        await sleep(wait)
        return
    }
    throw new IntercomError(
        'rate_limited',
        `backing off until Intercom's rate limit resets (${new Date(Date.now() + wait).toISOString()})`
    )
}

/** The one function that talks to Intercom. Resolves with the parsed body of a 2xx, or throws IntercomError. */
async function callIntercom(ctx: Context, method: string, path: string, body?: unknown): Promise<unknown> {
    for (let attempt = 1; ; attempt++) {
        await waitOutBackoff(ctx)
        const response = await send(ctx, method, path, body)
        const data = await readBody(response)
        const kind = classifyResponse(response.status, data)
        const reset = readHeader(response.headers, 'x-ratelimit-reset')
        if (kind === 'rate_limited' || (kind === 'ok' && windowNearlySpent(response.headers))) {
            await rememberBackoff(ctx, backoffUntil(reset, Date.now()))
        }
        if (kind === 'ok') {
            if (isTestFunctionAnswer(method, data)) throw new TestFunctionRun()
            return data
        }
        if (!mayRetryInPlace(ctx, kind, attempt)) {
            throw new IntercomError(
                kind,
                `Intercom answered ${response.status} to ${method} ${path}: ${intercomMessage(data)}`,
                response.status
            )
        }
        if (FAILURE_POLICY[kind].inPlace === 'again' && ctx.global.sleep) {
            await ctx.global.sleep(IN_PLACE_DELAY_MS * attempt)
        }
    }
}

// ---------------------------------------------------------------------------------------------------
// Retry queue: where meta.cache exists, transient failures are parked in a cache list. onEvent drains a
// bounded batch (PostHog stopped calling runEveryMinute in March 2025) and runEveryMinute drains more.
// At least once: an item is read (LRANGE), delivered, and only then removed (LREM), so a worker that
// dies mid-drain loses nothing, and Intercom deduplicates on contact + event_name + created_at.
// Only LPUSH, LRANGE, LLEN, LREM, INCR and EXPIRE are used: LPOP with a count needs Redis 6.2.
// ---------------------------------------------------------------------------------------------------

interface QueuedDelivery {
    draft: EventDraft
    /**
     * The person's identityText (the email, or `user_id:<external ID>`), AES-GCM sealed with a key
     * derived from the API key: never in clear in the cache. The name predates external IDs.
     */
    sealedEmail: string
    uuid: string
    attempts: number
    queuedAt: number
}

/** A queue entry as stored (the exact string LREM needs) and as read. */
interface Entry {
    raw: string
    item: QueuedDelivery | null
}

function emailKey(token: string): Buffer {
    return createHash('sha256').update(`posthog-intercom queue:${token}`).digest()
}

export function sealEmail(email: string, token: string): string {
    const iv = randomBytes(12)
    const cipher = createCipheriv('aes-256-gcm', emailKey(token), iv)
    const data = Buffer.concat([cipher.update(email, 'utf8'), cipher.final()])
    return Buffer.concat([iv, cipher.getAuthTag(), data]).toString('base64')
}

/** Null when the item was sealed with another API key (the key was changed meanwhile). */
function openEmail(sealed: string, token: string): string | null {
    try {
        const raw = Buffer.from(sealed, 'base64')
        const decipher = createDecipheriv('aes-256-gcm', emailKey(token), raw.subarray(0, 12))
        decipher.setAuthTag(raw.subarray(12, 28))
        return Buffer.concat([decipher.update(raw.subarray(28)), decipher.final()]).toString('utf8')
    } catch {
        return null
    }
}

function parseQueued(raw: unknown): QueuedDelivery | null {
    try {
        // Some cache implementations JSON-encode list items themselves: unwrap up to three times.
        let value = raw
        for (let i = 0; i < 3 && typeof value === 'string'; i++) {
            value = JSON.parse(value)
        }
        const draft = propertyOf(value, 'draft')
        const valid =
            typeof propertyOf(value, 'sealedEmail') === 'string' &&
            typeof propertyOf(draft, 'event_name') === 'string'
        return valid ? (value as QueuedDelivery) : null
    } catch {
        return null
    }
}

/** PostHog's cache refuses more than 1,000 elements in one lpush (1.0's set-aside list is moved in such chunks). */
const LPUSH_MAX = 1000

type Parked = 'parked' | 'queue full' | 'cache unavailable'

/** Parks one entry at the head of the queue; `room` refuses it when the queue is at its bound. */
async function park(cache: CacheExtension, raw: string, room: boolean): Promise<Parked> {
    try {
        if (room && (await cache.llen(CACHE_KEYS.queue)) >= QUEUE_MAX_LENGTH) return 'queue full'
        await cache.lpush(CACHE_KEYS.queue, [raw])
        return 'parked'
    } catch {
        return 'cache unavailable'
    }
}

async function queueLength(cache: CacheExtension): Promise<number> {
    try {
        return await cache.llen(CACHE_KEYS.queue)
    } catch {
        return 0
    }
}

/** INCR is atomic in Redis: the worker that makes it 1 drains; the others leave the queue to it. */
async function takeDrainLock(cache: CacheExtension): Promise<string | null> {
    const key = CACHE_KEYS.drainLock(Date.now())
    try {
        if ((await cache.incr(key)) !== 1) return null
        await cache.expire(key, DRAIN_LOCK_SECONDS)
        return key
    } catch {
        return null
    }
}

/** Back to "0", which the next INCR makes 1 again. */
async function releaseDrainLock(cache: CacheExtension, key: string): Promise<void> {
    try {
        await cache.set(key, 0, DRAIN_LOCK_SECONDS)
    } catch {
        // Expires by itself.
    }
}

/** Version 1.0 set retries aside in a second list during a drain: they join the queue, once per worker. */
async function adoptSetAside(ctx: Context, cache: CacheExtension): Promise<void> {
    if (ctx.global.adoptedSetAside) return
    try {
        for (let round = 0; round <= QUEUE_MAX_LENGTH / LPUSH_MAX; round++) {
            const raws = await cache.lrange(CACHE_KEYS.later, -LPUSH_MAX, -1)
            if (raws.length === 0) break
            await cache.lpush(CACHE_KEYS.queue, raws)
            for (const raw of raws) await cache.lrem(CACHE_KEYS.later, -1, raw)
        }
        ctx.global.adoptedSetAside = true
    } catch {
        // Tried again by the next drain.
    }
}

type Verdict = { kind: 'delivered' | 'retry' | 'backoff' } | { kind: 'drop'; reason: string }

/** Why Intercom's answer ends a queued event's retries: its own words (emails masked). */
function dropReason(error: IntercomError): string {
    return error.kind === 'auth' ? `API key rejected (${error.status})` : error.message
}

/** One queued event, through the same delivery path as a new one. */
async function retryQueued(ctx: Context, item: QueuedDelivery | null): Promise<Verdict> {
    const identity = item ? identityFromText(openEmail(item.sealedEmail, ctx.settings.token)) : null
    if (!item || !identity) {
        return { kind: 'drop', reason: 'unreadable (was the API key changed?)' }
    }
    try {
        const outcome = await deliver(ctx, identity, item.draft)
        return outcome.status === 'delivered'
            ? { kind: 'delivered' }
            : { kind: 'drop', reason: outcome.reason ?? 'not sent' }
    } catch (error) {
        if (!(error instanceof IntercomError)) throw error
        const queued = FAILURE_POLICY[error.kind].queued
        return queued === 'drop' ? { kind: 'drop', reason: dropReason(error) } : { kind: queued }
    }
}

/** `attempts` counts the tries made so far, the first one in onEvent included. */
function mayRetry(item: QueuedDelivery): boolean {
    return item.attempts + 1 < QUEUE_MAX_ATTEMPTS && Date.now() - item.queuedAt < QUEUE_MAX_AGE_SECONDS * 1000
}

function emptyDrain(): DrainResult {
    return { delivered: 0, retried: 0, dropped: 0, droppedByReason: {}, remaining: 0 }
}

function countDrop(ctx: Context, result: DrainResult, uuid: string | undefined, reason: string): void {
    result.dropped++
    result.droppedByReason[reason] = (result.droppedByReason[reason] ?? 0) + 1
    ctx.log('error', `Dropped queued event ${uuid ?? '(unreadable)'}: ${reason}.`)
}

/**
 * Records a verdict, then removes the entry. A retry is pushed back (one attempt more) before the old
 * entry goes, so a crash in between leaves two copies, never none. False: stop draining for now.
 */
async function settle(
    ctx: Context,
    cache: CacheExtension,
    { raw, item }: Entry,
    verdict: Verdict,
    result: DrainResult
): Promise<boolean> {
    if (verdict.kind === 'backoff') return false // left in place, not an attempt: Intercom asked us to wait
    if (verdict.kind === 'delivered') result.delivered++
    if (verdict.kind === 'drop') countDrop(ctx, result, item?.uuid, verdict.reason)
    if (verdict.kind === 'retry' && item && mayRetry(item)) {
        const again = JSON.stringify({ ...item, attempts: item.attempts + 1 })
        if ((await park(cache, again, false)) !== 'parked') return false
        result.retried++
    } else if (verdict.kind === 'retry') {
        countDrop(ctx, result, item?.uuid, `still failing after ${(item?.attempts ?? 0) + 1} attempts`)
    }
    try {
        await cache.lrem(CACHE_KEYS.queue, -1, raw) // from the tail, where the oldest entries are
        return true
    } catch {
        return false
    }
}

/** The oldest entries not yet taken in this run (LPUSH adds at the head, so they are at the tail). */
async function oldestEntries(cache: CacheExtension, taken: Set<string>, max: number): Promise<Entry[]> {
    let raws: string[]
    try {
        raws = await cache.lrange(CACHE_KEYS.queue, -QUEUE_BATCH, -1)
    } catch {
        return []
    }
    return raws
        .reverse()
        .filter((raw) => !taken.has(raw))
        .slice(0, max)
        .map((raw) => ({ raw, item: parseQueued(raw) }))
}

/** Delivers entries QUEUE_CONCURRENCY at a time. False: Intercom asked us to wait, or the cache failed. */
async function drainEntries(
    ctx: Context,
    cache: CacheExtension,
    entries: Entry[],
    result: DrainResult
): Promise<boolean> {
    for (let i = 0; i < entries.length; i += QUEUE_CONCURRENCY) {
        const chunk = entries.slice(i, i + QUEUE_CONCURRENCY)
        const verdicts = await Promise.all(chunk.map((entry) => retryQueued(ctx, entry.item)))
        let goOn = true
        for (let j = 0; j < chunk.length; j++) {
            goOn = (await settle(ctx, cache, chunk[j], verdicts[j], result)) && goOn
        }
        if (!goOn) return false
    }
    return true
}

/** Drains at most `maxItems` of what is waiting, within `budgetMs`, if no other worker is draining. */
async function drainQueue(
    ctx: Context,
    cache: CacheExtension,
    { maxItems, budgetMs }: { maxItems: number; budgetMs: number },
    result: DrainResult
): Promise<void> {
    const lock = await takeDrainLock(cache)
    if (!lock) return
    try {
        await adoptSetAside(ctx, cache)
        const started = Date.now()
        // What was waiting when the drain began: retries pushed back meanwhile wait for the next one.
        const limit = Math.min(maxItems, await queueLength(cache))
        const taken = new Set<string>()
        while (taken.size < limit && Date.now() - started < budgetMs) {
            if ((await rateLimitedUntil(ctx)) > Date.now()) break
            const entries = await oldestEntries(cache, taken, Math.min(QUEUE_BATCH, limit - taken.size))
            if (entries.length === 0) break
            entries.forEach((entry) => taken.add(entry.raw))
            if (!(await drainEntries(ctx, cache, entries, result))) break
        }
    } finally {
        await releaseDrainLock(cache, lock)
    }
}

function logDrain(ctx: Context, result: DrainResult): void {
    if (result.delivered + result.retried + result.dropped > 0) {
        ctx.log(
            'info',
            `Retry queue: ${result.delivered} delivered, ${result.retried} to retry, ${result.dropped} dropped, ${result.remaining} waiting.`
        )
    }
}

/** onEvent's share of the draining: a bounded batch on each event while a backlog waits. */
async function drainSome(ctx: Context): Promise<void> {
    const cache = ctx.cache
    if (!cache || Date.now() < ctx.global.nextDrainAt) return
    if ((await rateLimitedUntil(ctx)) > Date.now()) return
    if ((await queueLength(cache)) === 0) {
        // An empty queue is the usual case: look again in a second, not on every event.
        ctx.global.nextDrainAt = Date.now() + EVENT_DRAIN_EVERY_MS
        return
    }
    const result = emptyDrain()
    await drainQueue(ctx, cache, { maxItems: EVENT_DRAIN_ITEMS, budgetMs: EVENT_DRAIN_BUDGET_MS }, result)
    if (result.delivered + result.retried + result.dropped > 0) {
        result.remaining = await queueLength(cache)
        logDrain(ctx, result)
    }
}

// ---------------------------------------------------------------------------------------------------
// Contact and company sync, a side path: person and group properties → Intercom contacts and companies
// ---------------------------------------------------------------------------------------------------

type AttributeValue = string | number | boolean
interface ContactAttributes {
    name?: string
    phone?: string
    external_id?: string
    custom_attributes?: Record<string, AttributeValue>
    /** Other own fields of Intercom's contacts (signed_up_at, …), when mapped. */
    [field: string]: AttributeValue | Record<string, AttributeValue> | undefined
}
interface CompanyAttributes {
    company_id: string
    name?: string
    custom_attributes?: Record<string, AttributeValue>
    /** Other own fields of Intercom's companies (plan, industry, size, …), when mapped. */
    [field: string]: AttributeValue | Record<string, AttributeValue> | undefined
}
type DataType = 'string' | 'integer' | 'float' | 'boolean' | 'date'

/** Keys ending in these hold dates: Intercom wants them as Unix seconds. */
const DATE_KEY = /(_at|_date)$/i
const ATTRIBUTE_TTL_SECONDS = 30 * 24 * 3600

/** True when the event carries person updates worth syncing. */
function hasPersonUpdates(event: ProcessedPluginEvent): boolean {
    const props = event.properties ?? {}
    const nonEmpty = (value: unknown) =>
        value !== null && typeof value === 'object' && Object.keys(value).length > 0
    return (
        event.event === '$identify' ||
        [event.$set, event.$set_once, props.$set, props.$set_once].some(nonEmpty)
    )
}

/** The person as this event leaves it: stored properties, then `$set_once` where unset, then `$set`. */
function personProperties(event: ProcessedPluginEvent, person: PluginMeta['person']): Properties {
    const props = event.properties ?? {}
    const merged: Properties = { ...(person?.properties ?? {}) }
    for (const once of [props.$set_once, event.$set_once]) {
        for (const [key, value] of Object.entries(once ?? {})) {
            if (!(key in merged)) merged[key] = value
        }
    }
    return Object.assign(merged, props.$set ?? {}, event.$set ?? {})
}

/** An attribute value Intercom accepts; undefined drops it (null, NaN, long arrays). Arrays are JSON text. */
function attributeValue(key: string, value: unknown): AttributeValue | undefined {
    if (DATE_KEY.test(key)) {
        return toUnixSeconds(value) ?? undefined
    }
    if (typeof value === 'string') return truncate(value)
    if (typeof value === 'number') return Number.isFinite(value) ? value : undefined
    if (typeof value === 'boolean') return value
    return Array.isArray(value) ? compactJson(value) : undefined
}

/** Nested values become `parent_child` attributes, this many levels below the property at most… */
const FLATTEN_MAX_DEPTH = 3
/** …and this many attributes per property; what lies beyond is dropped and reported. */
const FLATTEN_MAX_KEYS = 20
/** `*` syncs at most this many person properties (Intercom allows a few hundred custom attributes). */
const SYNC_ALL_MAX_PROPERTIES = 100

function isPlainObject(value: unknown): value is Record<string, unknown> {
    return value !== null && typeof value === 'object' && !Array.isArray(value)
}

/** `{a: {b: 1}}` under `p` → `[['p_a_b', 1]]`, depth- and count-bounded; false when something was cut. */
export function flatten(name: string, value: unknown): { entries: [string, unknown][]; complete: boolean } {
    const entries: [string, unknown][] = []
    let complete = true
    const walk = (prefix: string, node: unknown, depth: number): void => {
        if (!isPlainObject(node)) {
            if (entries.length < FLATTEN_MAX_KEYS) entries.push([prefix, node])
            else complete = false
            return
        }
        if (depth === FLATTEN_MAX_DEPTH) {
            complete = false
            return
        }
        for (const [key, child] of Object.entries(node)) {
            const clean = cleanKey(key)
            if (clean && child !== null) walk(`${prefix}_${clean}`, child, depth + 1)
        }
    }
    walk(name, value, 0)
    return { entries, complete }
}

function dataType(key: string, value: AttributeValue): DataType {
    if (DATE_KEY.test(key)) return 'date'
    if (typeof value === 'number') return Number.isInteger(value) ? 'integer' : 'float'
    return typeof value === 'boolean' ? 'boolean' : 'string'
}

/**
 * Intercom's own contact and company fields (POST /contacts, POST /companies): a mapped property
 * named like one of them goes to that field, not to a custom attribute.
 */
const CONTACT_FIELDS: Record<string, DataType> = {
    name: 'string', phone: 'string', avatar: 'string', signed_up_at: 'date', last_seen_at: 'date',
    owner_id: 'integer', unsubscribed_from_emails: 'boolean',
} // prettier-ignore
const COMPANY_FIELDS: Record<string, DataType> = {
    name: 'string', plan: 'string', size: 'integer', website: 'string', industry: 'string',
    remote_created_at: 'date', monthly_spend: 'integer',
} // prettier-ignore

/** A value for one of Intercom's own fields, coerced to the field's type. */
function fieldValue(type: DataType, value: unknown): AttributeValue | undefined {
    const number = typeof value === 'string' && value.trim() !== '' ? Number(value) : value
    if (type === 'date') return toUnixSeconds(value) ?? undefined
    if (type === 'integer')
        return typeof number === 'number' && Number.isSafeInteger(Math.round(number))
            ? Math.round(number)
            : undefined
    if (type === 'boolean')
        return typeof value === 'boolean'
            ? value
            : value === 'true'
              ? true
              : value === 'false'
                ? false
                : undefined
    return typeof value === 'string' || typeof value === 'number' ? truncate(String(value)) : undefined
}

interface MappedAttributes {
    fields: Record<string, AttributeValue>
    custom: Record<string, AttributeValue>
    /** Mapped properties dropped in whole or in part (unusable values, nesting past the bounds). */
    dropped: string[]
}

/** Splits mapped properties into Intercom's own fields and custom attributes. */
function mapAttributes(
    source: Properties,
    mapping: Rename[],
    ownFields: Record<string, DataType>
): MappedAttributes {
    const fields: [string, AttributeValue][] = []
    const custom: [string, AttributeValue][] = []
    const dropped: string[] = []
    for (const { from, to } of mapping) {
        if (!Object.prototype.hasOwnProperty.call(source, from) || source[from] === null) continue
        if (Object.prototype.hasOwnProperty.call(ownFields, to)) {
            const value = fieldValue(ownFields[to], source[from])
            if (value === undefined) dropped.push(from)
            else fields.push([to, value])
            continue
        }
        const { entries, complete } = flatten(to, source[from])
        let usable = complete
        for (const [key, leaf] of entries) {
            const value = attributeValue(key, leaf)
            if (value === undefined) usable = false
            else custom.push([key, value])
        }
        if (!usable) dropped.push(from)
    }
    return { fields: Object.fromEntries(fields), custom: Object.fromEntries(custom), dropped }
}

function withoutEmpty<T extends object>(value: T): T {
    return JSON.parse(JSON.stringify(value)) // drops undefined members
}

/** `*`: every person property not starting with `$`, but the email and external ID (standard fields). */
function syncedProperties(source: Properties, settings: Settings): Rename[] {
    const { attributes, externalId } = settings.sync
    if (attributes !== 'all') return attributes
    const standard = new Set([settings.emailProperty, externalId.property])
    return Object.keys(source)
        .filter((key) => !key.startsWith('$') && !standard.has(key))
        .slice(0, SYNC_ALL_MAX_PROPERTIES)
        .map((key) => ({ from: key, to: key }))
}

/** Older events (replays, late batches) must not move last_seen_at back. */
const LAST_SEEN_MAX_AGE_SECONDS = 24 * 3600

/** The event time as last_seen_at, when that option is on and the event is recent. */
function lastSeenAt(event: ProcessedPluginEvent, sync: SyncSettings): number | undefined {
    const time = sync.lastSeen ? eventTime(event) : null
    return time !== null && Date.now() / 1000 - time < LAST_SEEN_MAX_AGE_SECONDS ? time : undefined
}

/** Standard attributes (name, phone, external_id, last_seen_at) and the mapped custom ones. */
function contactAttributes(
    event: ProcessedPluginEvent,
    person: PluginMeta['person'],
    settings: Settings
): { attributes: ContactAttributes; dropped: string[] } {
    const source = personProperties(event, person)
    const text = (value: unknown) =>
        typeof value === 'string' && value.trim() ? truncate(value.trim()) : undefined
    const fullName = [text(source.first_name), text(source.last_name)].filter(Boolean).join(' ')
    const mapped = mapAttributes(source, syncedProperties(source, settings), CONTACT_FIELDS)
    const attributes: ContactAttributes = {
        name: text(source.name) ?? (fullName || undefined),
        phone: text(source.phone),
        external_id: findExternalId(event, person, settings.sync.externalId) ?? undefined,
        last_seen_at: lastSeenAt(event, settings.sync),
        ...mapped.fields, // a mapped last_seen_at wins over the event time
        custom_attributes: Object.keys(mapped.custom).length > 0 ? mapped.custom : undefined,
    }
    return { attributes: withoutEmpty(attributes), dropped: mapped.dropped }
}

function companyAttributes(
    event: ProcessedPluginEvent,
    company: NonNullable<SyncSettings['company']>
): { attributes: CompanyAttributes | null; dropped: string[] } {
    const props = event.properties ?? {}
    const key = props.$group_key
    if (
        props.$group_type !== company.groupType ||
        (typeof key !== 'string' && typeof key !== 'number') ||
        String(key).trim() === ''
    ) {
        return { attributes: null, dropped: [] }
    }
    const set: Properties =
        props.$group_set !== null && typeof props.$group_set === 'object' ? props.$group_set : {}
    const mapped = mapAttributes(set, company.attributes, COMPANY_FIELDS)
    const attributes: CompanyAttributes = {
        company_id: truncate(String(key).trim()),
        name: typeof set.name === 'string' && set.name.trim() ? truncate(set.name.trim()) : undefined,
        ...mapped.fields,
        custom_attributes: Object.keys(mapped.custom).length > 0 ? mapped.custom : undefined,
    }
    return { attributes: withoutEmpty(attributes), dropped: mapped.dropped }
}

/** Creates the custom attributes Intercom does not have yet, once each (remembered in the cache). */
async function ensureAttributes(
    ctx: Context,
    model: 'contact' | 'company',
    values: Record<string, AttributeValue> | undefined
): Promise<void> {
    if (!values || !ctx.settings.sync.createAttributes) return
    for (const [name, value] of Object.entries(values)) {
        const key = CACHE_KEYS.attribute(model, name)
        if ((await ctx.store.get(key)) === 1) continue
        try {
            await callIntercom(ctx, 'POST', '/data_attributes', {
                name,
                model,
                data_type: dataType(name, value),
            })
        } catch (error) {
            // "You already have 'x' in your … data": someone created it first, which is what we wanted.
            if (!(error instanceof IntercomError && /already (have|exists)/i.test(error.message))) throw error
        }
        await ctx.store.set(key, 1, ATTRIBUTE_TTL_SECONDS)
    }
}

/** PUT to the person's contact; false when Intercom has none. */
async function updateContact(
    ctx: Context,
    identity: Identity,
    attributes: ContactAttributes
): Promise<boolean> {
    const cachedId = await resolveContact(ctx, identity)
    if (!cachedId || Object.keys(attributes).length === 0) return cachedId !== null
    const put = (id: string) => callIntercom(ctx, 'PUT', `/contacts/${id}`, attributes)
    return withContact(ctx, identity, cachedId, put)
}

type SyncResult = 'created' | 'updated' | 'unchanged' | 'no contact'

/**
 * What decides whether a sync is needed: the attributes, with last_seen_at to the hour, so that a person
 * whose values did not change costs at most one call an hour.
 */
function syncDigest(attributes: ContactAttributes): string {
    const seen = attributes.last_seen_at
    return digest({ ...attributes, last_seen_at: typeof seen === 'number' ? Math.floor(seen / 3600) : seen })
}

/** Creates or updates the contact; no call at all when nothing mapped changed since the last sync. */
async function syncContact(
    ctx: Context,
    event: ProcessedPluginEvent,
    found: { identity: Identity; email: string | null },
    person: PluginMeta['person']
): Promise<SyncResult> {
    const sync = ctx.settings.sync
    const { attributes, dropped } = contactAttributes(event, person, ctx.settings)
    if (dropped.length > 0) {
        ctx.log(
            'info',
            `Event ${eventLabel(event)}: not synced in whole (unusable values, or nested past 3 levels or 20 keys): ${dropped.join(', ')}.`
        )
    }
    // Nothing mapped has a value: an update has nothing to send (a create still makes the contact).
    if (Object.keys(attributes).length === 0 && sync.contacts === 'update') return 'unchanged'
    const hashKey = CACHE_KEYS.contactSync(found.identity)
    const hash = syncDigest(attributes)
    if ((await ctx.store.get(hashKey)) === hash) return 'unchanged'
    await ensureAttributes(ctx, 'contact', attributes.custom_attributes)
    let result: SyncResult
    if (await updateContact(ctx, found.identity, attributes)) {
        result = 'updated'
    } else if (sync.contacts === 'create') {
        // A contact found by external ID gets the person's email too, when known.
        const withEmail =
            found.identity.kind === 'user_id' && found.email
                ? { ...attributes, email: found.email }
                : attributes
        const id = await createContact(ctx, found.identity, sync.createRole, withEmail)
        await rememberContact(ctx, found.identity, id)
        result = 'created'
    } else {
        return 'no contact'
    }
    await ctx.store.set(hashKey, hash, CONTACT_TTL_SECONDS)
    return result
}

/** The Intercom id of a company; POST /companies creates or updates by company_id. */
async function upsertCompany(ctx: Context, attributes: CompanyAttributes): Promise<string> {
    const company = await callIntercom(ctx, 'POST', '/companies', attributes)
    const id = propertyOf(company, 'id')
    if (typeof id !== 'string') throw new IntercomError('transient', 'Intercom returned a company without id')
    await ctx.store.set(CACHE_KEYS.company(attributes.company_id), id, CONTACT_TTL_SECONDS)
    return id
}

/** `$groupidentify` of the mapped group type → create or update the Intercom company. */
async function syncCompany(ctx: Context, event: ProcessedPluginEvent): Promise<SyncResult> {
    const company = ctx.settings.sync.company
    const { attributes, dropped } = company
        ? companyAttributes(event, company)
        : { attributes: null, dropped: [] }
    if (!attributes) return 'unchanged'
    if (dropped.length > 0) {
        ctx.log(
            'info',
            `Event ${eventLabel(event)}: company values not synced (nested or empty): ${dropped.join(', ')}.`
        )
    }
    const hashKey = CACHE_KEYS.companySync(attributes.company_id)
    const hash = digest(attributes)
    if ((await ctx.store.get(hashKey)) === hash) return 'unchanged'
    await ensureAttributes(ctx, 'company', attributes.custom_attributes)
    await upsertCompany(ctx, attributes)
    await ctx.store.set(hashKey, hash, CONTACT_TTL_SECONDS)
    return 'updated'
}

/** The company key of an event's `$groups` for the mapped group type. */
function companyKeyOf(event: ProcessedPluginEvent, settings: Settings): string | null {
    const groupType = settings.sync.company?.groupType
    const key = groupType ? propertyOf(event.properties?.$groups, groupType) : undefined
    return (typeof key === 'string' && key.trim()) || typeof key === 'number'
        ? truncate(String(key).trim())
        : null
}

/** Attaches the contact to the company of its `$groups`, once (remembered in the cache). */
async function attachCompany(ctx: Context, identity: Identity, companyKey: string): Promise<boolean> {
    const doneKey = CACHE_KEYS.attached(identity, companyKey)
    if ((await ctx.store.get(doneKey)) === 1) return false
    const contactId = await resolveContact(ctx, identity)
    if (!contactId) return false
    const cached = await ctx.store.get(CACHE_KEYS.company(companyKey))
    const companyId =
        typeof cached === 'string' && cached ? cached : await upsertCompany(ctx, { company_id: companyKey })
    await callIntercom(ctx, 'POST', `/contacts/${contactId}/companies`, { id: companyId })
    await ctx.store.set(doneKey, 1, ATTRIBUTE_TTL_SECONDS)
    return true
}

// ---------------------------------------------------------------------------------------------------
// PostHog hooks
// ---------------------------------------------------------------------------------------------------

function context(meta: PluginMeta): Context {
    const global = meta.global
    return {
        settings: global.settings,
        global,
        store: meta.cache ? sharedStore(meta.cache) : localStore(global.localCache),
        cache: meta.cache,
        // node-fetch is the plugin-server's client; PostHog's current executor passes its own fetch.
        http: meta.fetch ?? (fetch as unknown as FetchFn),
        log: makeLog(meta),
    }
}

/** GET /me: a rejected key or a workspace in another region stops setup; a hiccup does not. */
async function checkToken(ctx: Context): Promise<void> {
    let me: unknown
    try {
        me = await callIntercom(ctx, 'GET', '/me')
    } catch (error) {
        if (error instanceof IntercomError && error.kind === 'auth') {
            throw new ConfigError(
                `${apiKeyRejected(error.status, ctx.settings.region)} Check that "Intercom API key" is the access token of your Intercom app and that the app is installed on your workspace.`
            )
        }
        ctx.log(
            'warn',
            `Could not check the Intercom API key now (${(error as Error).message}); events will still be sent.`
        )
        return
    }
    const actual = INTERCOM_REGION_NAMES[String(propertyOf(propertyOf(me, 'app'), 'region'))]
    if (actual && actual !== ctx.settings.region) {
        throw new ConfigError(
            `Your Intercom workspace is hosted in the ${actual} region but the plugin is set to ${ctx.settings.region}: set "Region" to ${actual}.`
        )
    }
}

/** PostHog's current executor runs plugins as plain modules, with timers; its sandbox had none. */
function sleeper(): Global['sleep'] {
    // eslint-disable-next-line no-restricted-globals -- probed here, never assumed: absent in the sandbox
    const timer = typeof setTimeout === 'function' ? setTimeout : null
    return timer ? (ms) => new Promise((resolve) => timer(resolve, ms)) : null
}

export async function setupPlugin(meta: PluginMeta): Promise<void> {
    meta.global.settings = parseConfig(meta.config)
    meta.global.localCache = new LocalCache(LOCAL_CACHE_MAX_ENTRIES)
    meta.global.backoffUntil = 0
    meta.global.inflight = new Map()
    meta.global.logged = new Set()
    meta.global.lastLogged = new Map()
    meta.global.sleep = sleeper()
    meta.global.nextDrainAt = 0
    meta.global.adoptedSetAside = false
    await checkToken(context(meta))
}

/** A missing timestamp means "now"; a present but unreadable one is bad input. */
function eventTime(event: ProcessedPluginEvent): number | null {
    const timestamp: unknown = event.timestamp
    return timestamp === undefined || timestamp === null || timestamp === ''
        ? Math.floor(Date.now() / 1000)
        : toUnixSeconds(timestamp)
}

/** What an event asks for: delivery as a data event, and/or syncing its person or company. */
interface Work {
    deliver: boolean
    syncPerson: boolean
    syncCompany: boolean
    companyKey: string | null
}

export function planWork(event: ProcessedPluginEvent, settings: Settings): Work {
    const { contacts, company } = settings.sync
    return {
        deliver: settings.triggeringEvents.has(event.event),
        syncPerson: contacts !== 'off' && hasPersonUpdates(event),
        syncCompany: company !== null && event.event === '$groupidentify',
        companyKey: company ? companyKeyOf(event, settings) : null,
    }
}

/**
 * Sends one event, then lets the retry queue catch up a little. Resolves with what happened; throws
 * RetryError (transient, and not parked) or Error (permanent).
 */
export async function onEvent(event: ProcessedPluginEvent, meta: PluginMeta): Promise<Outcome> {
    const ctx = context(meta)
    let outcome: Outcome
    try {
        outcome = await handleEvent(ctx, event, meta)
    } catch (error) {
        if (!(error instanceof TestFunctionRun)) throw error
        ctx.log('info', `Test run of event ${eventLabel(event)}: ${TEST_RUN_NOTE}.`)
        return { status: 'skipped', reason: 'test run' }
    }
    if (outcome.status !== 'queued') await drainSome(ctx)
    return outcome
}

const TEST_RUN_NOTE =
    "PostHog's test function answers POST requests itself, so nothing was sent to Intercom; the API key was checked with GET /me when the plugin started, and real events are delivered"

/** One event's path: echo and plan checks, the sync side path, delivery, then the side path's failure. */
async function handleEvent(ctx: Context, event: ProcessedPluginEvent, meta: PluginMeta): Promise<Outcome> {
    if (isEcho(event)) return skip(ctx, event, 'Intercom echo event', true)
    const work = planWork(event, ctx.settings)
    const wantsPerson = work.deliver || work.syncPerson || work.companyKey !== null
    if (!wantsPerson && !work.syncCompany) return skip(ctx, event, 'not a triggering event', false)

    const side = sidePath()
    const outcome: Outcome = { status: 'synced' }
    if (work.syncCompany) outcome.company = await side.attempt(() => syncCompany(ctx, event))
    // PostHog's current executor puts the person on the event; meta.person is accepted too.
    const person = event.person ?? meta.person
    const found = wantsPerson ? findPerson(event, person, ctx.settings) : null
    if (found && 'identity' in found) {
        const { identity } = found
        const companyKey = work.companyKey
        if (work.syncPerson)
            outcome.contact = await side.attempt(() => syncContact(ctx, event, found, person))
        if (companyKey) outcome.attached = await side.attempt(() => attachCompany(ctx, identity, companyKey))
        if (work.deliver) Object.assign(outcome, await deliverEvent(ctx, event, identity))
    } else if (found && (work.deliver || !work.syncCompany)) {
        Object.assign(outcome, skip(ctx, event, found.skip, work.deliver))
    }
    if (side.failures.length > 0) await raiseFailure(ctx, eventLabel(event), side.failures[0])
    return outcome
}

/** The plugin's own events, echoed back by Intercom's PostHog integration, are never sent again. */
function isEcho(event: ProcessedPluginEvent): boolean {
    return typeof event.event === 'string' && event.event.startsWith(ECHO_PREFIX)
}

/**
 * A skipped event, logged each time when it was meant for Intercom (`loud`), else once per event name:
 * events neither sent nor synced are most of the traffic, and PostHog stores every log line.
 */
function skip(ctx: Context, event: ProcessedPluginEvent, reason: string, loud: boolean): Outcome {
    if (loud) {
        ctx.log('info', `Skipped event ${eventLabel(event)}: ${reason}.`)
    } else if (firstTime(ctx.global, `${reason}:${eventName(event)}`)) {
        ctx.log('debug', `Skipped "${eventName(event)}" events: ${reason} (logged once per event name).`)
    }
    return { status: 'skipped', reason }
}

/** Sync tasks run before delivery; their first failure is raised after the event itself had its chance. */
function sidePath(): { failures: unknown[]; attempt: <T>(task: () => Promise<T>) => Promise<T | undefined> } {
    const failures: unknown[] = []
    const attempt = async <T>(task: () => Promise<T>): Promise<T | undefined> => {
        try {
            return await task()
        } catch (error) {
            failures.push(error)
            return undefined
        }
    }
    return { failures, attempt }
}

async function deliverEvent(ctx: Context, event: ProcessedPluginEvent, identity: Identity): Promise<Outcome> {
    const createdAt = eventTime(event)
    if (createdAt === null) {
        ctx.log('info', `Skipped event ${eventLabel(event)}: invalid timestamp.`)
        return { status: 'skipped', reason: 'invalid timestamp' }
    }
    const draft = buildEventDraft(event, createdAt, ctx.settings)
    try {
        const outcome = await deliver(ctx, identity, draft)
        if (outcome.status === 'skipped')
            ctx.log('info', `Skipped event ${eventLabel(event)}: ${outcome.reason}.`)
        return outcome
    } catch (error) {
        return await handleFailure(ctx, { draft, identity, uuid: eventLabel(event) }, error)
    }
}

/** A sync failure: transient ones are left to PostHog's retries (the sync is idempotent), others are raised. */
async function raiseFailure(ctx: Context, uuid: string, error: unknown): Promise<never> {
    if (!(error instanceof IntercomError)) throw error
    if (FAILURE_POLICY[error.kind].then === 'park') {
        ctx.log('warn', `Sync of event ${uuid} not done yet: ${error.message}`)
        throw new RetryError(`Intercom: ${error.message}`)
    }
    ctx.log('error', `Sync of event ${uuid} failed: ${error.message}`)
    throw userFacingError(error, 'the contact or company sync', ctx.settings.region)
}

/** Permanent failures are raised for the user; transient ones are queued, else handed to PostHog's retries. */
async function handleFailure(
    ctx: Context,
    failed: { draft: EventDraft; identity: Identity; uuid: string },
    error: unknown
): Promise<Outcome> {
    if (!(error instanceof IntercomError)) {
        throw error
    }
    if (FAILURE_POLICY[error.kind].then === 'report') {
        ctx.log('error', `Failed event ${failed.uuid}: ${error.message}`)
        throw userFacingError(error, `event "${failed.draft.event_name}"`, ctx.settings.region)
    }
    const item: QueuedDelivery = {
        draft: failed.draft,
        sealedEmail: sealEmail(identityText(failed.identity), ctx.settings.token),
        uuid: failed.uuid,
        attempts: 1,
        queuedAt: Date.now(),
    }
    const parked = ctx.cache ? await park(ctx.cache, JSON.stringify(item), true) : null
    if (parked === 'parked') {
        if (notRecentlyLogged(ctx.global, `queued:${error.kind}`)) {
            ctx.log('info', `Queued event ${failed.uuid} for retry: ${error.message} (${QUIET_NOTE})`)
        }
        return { status: 'queued', reason: error.kind }
    }
    // Not parked: only PostHog's own retries are left, and only some runtimes retry.
    const why = parked ? ` The retry queue could not take it (${parked}).` : ''
    if (notRecentlyLogged(ctx.global, `retry:${error.kind}:${parked}`)) {
        ctx.log('warn', `Event ${failed.uuid} not delivered yet: ${error.message}.${why} (${QUIET_NOTE})`)
    }
    throw new RetryError(`Intercom: ${error.message}.${why}`)
}

/**
 * A token works only against its own workspace's region: refused on the EU or AU host, the region is as
 * likely a cause as the key itself.
 */
function apiKeyRejected(status: number | undefined, region: Region): string {
    const regionHint =
        region === 'US'
            ? ''
            : ` Likely cause: the Region. The plugin is set to ${region}, and a token is refused by any region but its workspace's: check "Region" (and "Use European data storage") against where your workspace is hosted.`
    return `Intercom rejected the API key (${status}) on ${REGION_HOSTS[region]}.${regionHint}`
}

/** The message PostHog shows the user: what was refused and what to do about it. */
function userFacingError(error: IntercomError, subject: string, region: Region): Error {
    if (error.kind === 'auth') {
        return new Error(
            `${apiKeyRejected(error.status, region)} Check "Intercom API key" in the plugin settings. ${error.message}`
        )
    }
    if (MISSING_ATTRIBUTE.test(error.message)) {
        return new Error(
            `Intercom refused ${subject} because a custom attribute does not exist, and it will not be retried. ${error.message}. Create the custom attribute in Intercom (Settings → Data → People or Companies) or set "Create missing custom attributes" to Yes.`
        )
    }
    return new Error(`Intercom refused ${subject} and it will not be retried. ${error.message}`)
}

/** Drains the retry queue (plugin-server runtimes up to February 2025; onEvent drains too). */
export async function runEveryMinute(meta: PluginMeta): Promise<DrainResult> {
    const result = emptyDrain()
    const cache = meta.cache
    if (!cache || !meta.global.settings) {
        return result
    }
    const ctx = context(meta)
    await drainQueue(ctx, cache, { maxItems: QUEUE_MAX_LENGTH, budgetMs: QUEUE_DRAIN_BUDGET_MS }, result)
    result.remaining = await queueLength(cache)
    logDrain(ctx, result)
    return result
}
