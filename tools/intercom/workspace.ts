/** The data of the Intercom model: contacts, companies, data attributes and events, one small class each.
 * With the rules of Intercom's that depend on that data: conflicts, known attributes, event names.
 */
import type { ResolvedOptions } from './model'
import { DataType, isInteger, isGroup, SearchNode } from './rules'

export type ContactRole = 'user' | 'lead'
export type AttributeModel = 'contact' | 'company'
type JsonObject = Record<string, unknown>

/** Contacts a workspace starts with; `updated_at` in Unix seconds. */
export interface SeedContact {
    id?: string
    email: string
    role: ContactRole
    external_id?: string
    name?: string
    updated_at?: number
    custom_attributes?: Record<string, unknown>
}

/** A contact as Intercom answers it; times in Unix seconds. */
export interface StoredContact {
    type: 'contact'
    id: string
    workspace_id: string
    role: ContactRole
    external_id: string | null
    email: string | null
    name: string | null
    phone: string | null
    created_at: number
    updated_at: number
    signed_up_at: number | null
    last_seen_at: number | null
    custom_attributes: Record<string, unknown>
    companies: {
        type: 'list'
        data: { type: 'company'; id: string; url: string }[]
        url: string
        total_count: number
        has_more: boolean
    }
}

/** A company as Intercom answers it; `plan` is {} until one is set. */
export interface StoredCompany {
    type: 'company'
    id: string
    company_id: string
    app_id: string
    name: string | null
    size: number | null
    website: string | null
    industry: string | null
    remote_created_at: number | null
    created_at: number
    updated_at: number
    monthly_spend: number
    session_count: number
    user_count: number
    plan: { type: 'plan'; id: string; name: string } | Record<string, never>
    custom_attributes: Record<string, unknown>
}

export type DataAttribute = { name: string; data_type: DataType; model: AttributeModel }

export interface StoredEvent {
    event_name: string
    created_at: number
    contact_id: string
    metadata: Record<string, unknown>
    /** How many POSTs carried it: more than 1 means Intercom deduplicated retries. */
    received: number
}

/** What the workspace counts (the model adds calls, routes and statuses). */
export type WorkspaceCounters = Record<
    'eventsAccepted' | 'eventsDeduplicated' | 'contactsCreated' | 'contactsUpdated' | 'searches',
    number
>

/** What the workspace reads of the model's options, live (configure() changes them mid-run). */
type WorkspaceOptions = Pick<ResolvedOptions, 'clock' | 'searchLagMs' | 'maxEventNames' | 'openWorld'>

export const APP_ID = 'emulator-app'

/** A refusal with Intercom's status and code; the model turns it into Intercom's error body. */
export class ApiError extends Error {
    constructor(
        readonly status: number,
        readonly code: string,
        message: string
    ) {
        super(message)
    }
}

const invalid = (message: string) => new ApiError(400, 'parameter_invalid', message)
const conflict = (id: string) =>
    new ApiError(409, 'conflict', `A contact matching those details already exists with id=${id}`)
const userNotFound = () => new ApiError(404, 'not_found', 'User Not Found')
const seconds = ({ options }: Workspace) => Math.floor(options.clock() / 1000)

/** 24 hex digits, like Intercom's ids; sequential so that runs are reproducible; skips ids seeds took. */
function idMaker(taken: (id: string) => boolean): () => string {
    let counter = 0
    return () => {
        let id: string
        do id = `65${(++counter).toString(16).padStart(22, '0')}`
        while (taken(id))
        return id
    }
}

/** Some names Intercom reserves for its own attributes; GET /data_attributes lists them as not custom. */
// prettier-ignore
export const STANDARD_ATTRIBUTES: Record<AttributeModel, Record<string, DataType>> = {
    contact: {
        name: 'string', email: 'string', phone: 'string', external_id: 'string', role: 'string',
        created_at: 'date', updated_at: 'date', signed_up_at: 'date', last_seen_at: 'date',
        owner_id: 'integer', unsubscribed_from_emails: 'boolean',
    },
    company: {
        name: 'string', company_id: 'string', website: 'string', industry: 'string', size: 'integer',
        monthly_spend: 'float', remote_created_at: 'date', user_count: 'integer', session_count: 'integer',
    },
}

/** A custom attribute as stored; `created_at` in Unix seconds. */
export interface AttributeRecord extends DataAttribute {
    id: number
    description: string
    messenger_writable: boolean
    created_at: number
}

const isStandard = (model: AttributeModel, name: string) =>
    Object.prototype.hasOwnProperty.call(STANDARD_ATTRIBUTES[model], name)
const modelLabel = (model: AttributeModel) => (model === 'contact' ? 'people' : 'company')

function inferDataType(value: unknown): DataType {
    if (typeof value === 'boolean') return 'boolean'
    if (isInteger(value)) return 'integer'
    return typeof value === 'number' ? 'float' : 'string'
}

/** Dates are Unix seconds here; a string date is a caller bug worth surfacing. */
function fitsDataType(type: DataType, value: unknown): boolean {
    if (type === 'string') return typeof value === 'string'
    if (type === 'float') return typeof value === 'number' && Number.isFinite(value)
    if (type === 'boolean') return typeof value === 'boolean'
    return isInteger(value) // integer, date, datetime
}

/** Custom attributes by name: Intercom refuses a name in both models ("You already have 'x'…"). */
export class Attributes {
    private readonly byName = new Map<string, AttributeRecord>()

    constructor(private readonly ws: Workspace) {}

    define(attribute: DataAttribute, description = ''): AttributeRecord {
        const { name, model } = attribute
        const existing = this.byName.get(name)
        if (existing || isStandard(model, name)) {
            const taken = modelLabel(existing?.model ?? model)
            throw invalid(
                `You already have '${name}' in your ${taken} data. ` +
                    `To save this as new ${modelLabel(model)} data, use a different name.`
            )
        }
        const [id, created_at] = [this.byName.size + 1, seconds(this.ws)]
        const record = { ...attribute, id, description, messenger_writable: false, created_at }
        this.byName.set(attribute.name, record)
        return record
    }

    list = (model?: AttributeModel): AttributeRecord[] =>
        [...this.byName.values()].filter((a) => model === undefined || a.model === model)

    /**
     * Each key must be an existing custom attribute of the model, with a value of its type (null clears it).
     * Contact endpoints never create attributes on the fly, the companies endpoint does (`define`). In an open
     * world the real workspace's attributes are unknown: any non-standard name is taken as it comes.
     */
    check(model: AttributeModel, values: JsonObject, define: boolean): void {
        for (const [name, value] of Object.entries(values)) {
            const standard =
                `'${name}' is a standard ${model} attribute, ` +
                'not a custom one: send it as a top-level field.'
            if (isStandard(model, name)) throw invalid(standard)
            if (this.ws.options.openWorld) continue
            if (define && !this.byName.has(name))
                this.define({ name, model, data_type: inferDataType(value) })
            const attribute = this.byName.get(name)
            if (attribute?.model !== model) throw invalid(`Custom attribute '${name}' does not exist`)
            if (value !== null && !fitsDataType(attribute.data_type, value)) {
                throw invalid(`Custom attribute '${name}' must be of type ${attribute.data_type}`)
            }
        }
    }
}

interface ContactRecord extends Omit<StoredContact, 'type' | 'workspace_id' | 'companies'> {
    companyIds: string[]
    /** Clock ms from which search returns it: Intercom's search lags new contacts. */
    searchableAt: number
    /** Creation order, so that lookups through an index still list the oldest first. */
    seq: number
}

/** The fields a request may set (null until set), then the ones shown, in Intercom's order. */
const SETTABLE = ['role', 'email', 'external_id', 'name', 'phone', 'signed_up_at', 'last_seen_at'] as const
const SHOWN_FIELDS = ['id', ...SETTABLE, 'created_at', 'updated_at'] as const
type ContactField = (typeof SETTABLE)[number]
export type ContactInput = Partial<Pick<ContactRecord, ContactField>> & { custom_attributes?: JsonObject }

/** Contacts listed under a key (lower-case email, external id): emails are not unique in Intercom. */
class ContactIndex extends Map<string, ContactRecord[]> {
    constructor(private readonly keyOf: (record: ContactRecord) => string | null) {
        super()
    }

    list = (key: string): ContactRecord[] => this.get(key) ?? []

    /** Files `record` under its key (`add`), or takes it out. */
    file(record: ContactRecord, add: boolean): void {
        const key = this.keyOf(record)
        const others = key === null ? [] : this.list(key).filter((other) => other !== record)
        if (key !== null) this.set(key, add ? [...others, record] : others)
    }
}

/** The `field = 'value'` query the plugin makes, which an index answers; undefined for any other. */
function equality(query: SearchNode): { field: string; value: string } | undefined {
    if (isGroup(query) || query.operator !== '=' || typeof query.value !== 'string') return undefined
    return { field: query.field, value: query.value }
}

/** Contacts by id, by email and by external id: a benchmark may seed many, and must not measure a scan. */
export class Contacts {
    private readonly byId = new Map<string, ContactRecord>()
    private readonly byEmail = new ContactIndex((c) => (c.email ? c.email.toLowerCase() : null))
    private readonly byExternalId = new ContactIndex((c) => c.external_id || null)
    private readonly index = (record: ContactRecord, add: boolean) =>
        [this.byEmail, this.byExternalId].forEach((index) => index.file(record, add))
    private seq = 0

    constructor(private readonly ws: Workspace) {}

    has = (id: string): boolean => this.byId.has(id)

    /** Seeds existed before the run: searchable at once, duplicate emails allowed (old data has them). */
    seed(seed: SeedContact): { id: string } {
        if (seed.id !== undefined && this.byId.has(seed.id))
            throw new Error(`a contact with id ${seed.id} already exists`)
        if (seed.role !== 'user' && seed.role !== 'lead')
            throw new Error(`seed contact role must be user or lead`)
        this.ws.attributes.check('contact', seed.custom_attributes ?? {}, true)
        const at = seed.updated_at ?? seconds(this.ws)
        const record = this.insert(seed, at, 0, seed.id)
        record.signed_up_at = seed.role === 'user' ? at : null
        return { id: record.id }
    }

    create(input: ContactInput): StoredContact {
        const candidate = { ...input, role: input.role ?? 'user' }
        this.checkIdentity(candidate, undefined)
        this.ws.attributes.check('contact', input.custom_attributes ?? {}, false)
        const now = seconds(this.ws)
        const searchableAt = this.ws.options.clock() + this.ws.options.searchLagMs
        const record = this.insert(candidate, now, searchableAt)
        this.ws.counters.contactsCreated += 1
        return this.toContact(record)
    }

    /** A new record, created and updated `at` (Unix seconds), searchable from `searchableAt` (clock ms). */
    private insert(fields: ContactInput, at: number, searchableAt: number, id = this.ws.newId()) {
        const given = Object.fromEntries(SETTABLE.map((key) => [key, fields[key] ?? null]))
        const record: ContactRecord = {
            ...(given as Pick<ContactRecord, ContactField>),
            id,
            role: fields.role ?? 'user',
            created_at: at,
            updated_at: at,
            seq: ++this.seq,
            searchableAt,
            custom_attributes: { ...fields.custom_attributes },
            companyIds: [],
        }
        this.byId.set(record.id, record)
        this.index(record, true)
        return record
    }

    update(id: string, input: ContactInput): StoredContact {
        const record = this.record(id)
        const next = { ...record }
        for (const key of SETTABLE) if (input[key] !== undefined) Object.assign(next, { [key]: input[key] })
        this.checkIdentity(next, id)
        this.ws.attributes.check('contact', input.custom_attributes ?? {}, false)
        this.index(record, false)
        // Intercom merges custom attributes: keys not sent keep their value.
        const custom = { ...record.custom_attributes, ...input.custom_attributes }
        Object.assign(record, next, { custom_attributes: custom, updated_at: seconds(this.ws) })
        this.index(record, true)
        this.ws.counters.contactsUpdated += 1
        return this.toContact(record)
    }

    get = (id: string): StoredContact => this.toContact(this.record(id))

    record(id: string): ContactRecord {
        const record = this.byId.get(id)
        if (!record) throw userNotFound()
        return record
    }

    /** A user needs an email or an external_id; emails are unique per role, external ids across roles. */
    private checkIdentity(c: ContactInput, selfId: string | undefined): void {
        if (c.role === 'user' && !c.email && !c.external_id)
            throw invalid('A user contact needs an email or an external_id')
        if (c.email && !/^[^\s@]+@[^\s@]+$/.test(c.email)) throw invalid('Invalid email address')
        const sameEmail = this.byEmail.list(c.email?.toLowerCase() ?? '').filter((o) => o.role === c.role)
        const sameExternalId = this.byExternalId.list(c.external_id ?? '')
        const other = [...sameEmail, ...sameExternalId].find((o) => o.id !== selfId)
        if (other) throw conflict(other.id)
    }

    /** Every match past its search lag, oldest first: no preference between users and leads. */
    search(query: SearchNode): StoredContact[] {
        const now = this.ws.options.clock()
        this.ws.counters.searches += 1
        const found = this.candidates(query).filter(
            (record) => record.searchableAt <= now && matches(record, query)
        )
        return (found.length === 0 && this.ws.options.openWorld ? this.invent(query) : found)
            .sort((a, b) => a.seq - b.seq)
            .map((record) => this.toContact(record))
    }

    /** Open world: the person searched for by email or external id is a user, from now on. */
    private invent(query: SearchNode): ContactRecord[] {
        const wanted = equality(query)
        if (wanted?.field !== 'email' && wanted?.field !== 'external_id') return []
        return [this.insert({ [wanted.field]: wanted.value }, seconds(this.ws), 0)]
    }

    /** A superset of the matches: through an index for the common `field = value` query, else everyone. */
    private candidates(query: SearchNode): ContactRecord[] {
        const wanted = equality(query)
        if (wanted?.field === 'email') return this.byEmail.list(wanted.value.toLowerCase())
        if (wanted?.field === 'external_id') return this.byExternalId.list(wanted.value)
        if (wanted?.field === 'id') return this.byId.has(wanted.value) ? [this.record(wanted.value)] : []
        return this.all()
    }

    /** How POST /events finds its contact: `email` and `user_id` only ever designate users. */
    findForEvent(kind: 'id' | 'user_id' | 'email', value: string): ContactRecord {
        if (kind === 'id') return this.record(value)
        const list =
            kind === 'user_id' ? this.byExternalId.list(value) : this.byEmail.list(value.toLowerCase())
        const found = list.find((c) => c.role === 'user')
        if (!found) throw userNotFound()
        return found
    }

    all = (): ContactRecord[] => [...this.byId.values()]

    toContact(record: ContactRecord): StoredContact {
        const shown = Object.fromEntries(SHOWN_FIELDS.map((key) => [key, record[key]]))
        const data = record.companyIds.map((id) => ({
            type: 'company' as const,
            id,
            url: `/companies/${id}`,
        }))
        const url = `/contacts/${record.id}/companies`
        return {
            type: 'contact',
            ...(shown as Pick<ContactRecord, (typeof SHOWN_FIELDS)[number]>),
            workspace_id: APP_ID,
            custom_attributes: structuredClone(record.custom_attributes),
            companies: { type: 'list', data, url, total_count: data.length, has_more: false },
        }
    }
}

function matches(record: ContactRecord, node: SearchNode): boolean {
    if (isGroup(node)) {
        const test = (child: SearchNode) => matches(record, child)
        return node.operator === 'AND' ? node.value.every(test) : node.value.some(test)
    }
    // Intercom matches emails regardless of case; other string fields exactly.
    const fold = (text: string | null) => (node.field === 'email' ? text?.toLowerCase() : text)
    const wanted = (Array.isArray(node.value) ? node.value : [node.value]).map(fold)
    const hit = wanted.includes(fold(record[node.field]))
    return node.operator === '=' || node.operator === 'IN' ? hit : !hit
}

/** Companies by id and by the caller's company_id (POST /companies creates or updates by it). */
export class Companies {
    private readonly byId = new Map<string, StoredCompany>()
    private readonly byRemoteId = new Map<string, StoredCompany>()

    constructor(private readonly ws: Workspace) {}

    /** The companies endpoint stores "any other data about the company": unknown keys become attributes. */
    upsert(body: JsonObject): StoredCompany {
        const custom = (body.custom_attributes ?? {}) as JsonObject
        this.ws.attributes.check('company', custom, true)
        const now = seconds(this.ws)
        const id = body.company_id as string
        const company = this.byRemoteId.get(id) ?? this.create(id, now)
        for (const key of ['name', 'size', 'website', 'industry', 'remote_created_at'] as const) {
            if (body[key] !== undefined) Object.assign(company, { [key]: body[key] })
        }
        // Intercom: "this will truncate floats".
        if (typeof body.monthly_spend === 'number') company.monthly_spend = Math.trunc(body.monthly_spend)
        const { plan } = body
        if (typeof plan === 'string') company.plan = { type: 'plan', id: `plan-${plan}`, name: plan }
        if (plan === null) company.plan = {}
        company.custom_attributes = { ...company.custom_attributes, ...custom }
        company.updated_at = now
        return structuredClone(company)
    }

    private create(companyId: string, now: number): StoredCompany {
        const company: StoredCompany = {
            type: 'company',
            id: this.ws.newId(),
            company_id: companyId,
            app_id: APP_ID,
            name: null,
            remote_created_at: null,
            created_at: now,
            updated_at: now,
            monthly_spend: 0,
            session_count: 0,
            user_count: 0,
            size: null,
            website: null,
            industry: null,
            plan: {},
            custom_attributes: {},
        }
        this.byId.set(company.id, company)
        this.byRemoteId.set(companyId, company)
        return company
    }

    attach(contactId: string, companyId: string): StoredCompany {
        const contact = this.ws.contacts.record(contactId)
        const company = this.byId.get(companyId)
        if (!company) throw new ApiError(404, 'company_not_found', 'Company Not Found')
        if (!contact.companyIds.includes(company.id)) {
            contact.companyIds.push(company.id)
            company.user_count += 1
        }
        return structuredClone(company)
    }

    all = (): StoredCompany[] => [...this.byId.values()].map((company) => structuredClone(company))
}

/** Data events, deduplicated on contact + name + created_at like Intercom, within the event-name limit. */
export class Events {
    private readonly byKey = new Map<string, StoredEvent>()
    private readonly names = new Set<string>()

    constructor(private readonly ws: Workspace) {}

    /** A repeat is accepted but not stored twice. */
    track(event: Omit<StoredEvent, 'received'>): void {
        const key = JSON.stringify([event.contact_id, event.event_name, event.created_at])
        const existing = this.byKey.get(key)
        if (existing) {
            existing.received += 1
            this.ws.counters.eventsDeduplicated += 1
            return
        }
        const { maxEventNames } = this.ws.options
        if (!this.names.has(event.event_name) && this.names.size >= maxEventNames) {
            const message = `Cannot have more than ${maxEventNames} active event names`
            throw new ApiError(422, 'parameter_invalid', message)
        }
        this.names.add(event.event_name)
        this.byKey.set(key, { ...event, received: 1 })
        this.ws.counters.eventsAccepted += 1
    }

    all = (): StoredEvent[] => [...this.byKey.values()].map((event) => structuredClone(event))

    clear(): void {
        this.byKey.clear()
        this.names.clear()
    }
}

/** The four parts; each reads the model's live options and counters, and the others, through this. */
export class Workspace {
    readonly attributes = new Attributes(this)
    readonly contacts = new Contacts(this)
    readonly companies = new Companies(this)
    readonly events = new Events(this)
    /** Only seeds choose their ids, so only contacts can hold one the counter reaches. */
    readonly newId = idMaker((id) => this.contacts.has(id))

    constructor(
        readonly options: WorkspaceOptions,
        readonly counters: WorkspaceCounters
    ) {}
}
