/**
 * The data of the Intercom model and Intercom's rules that depend on it (conflicts, known attributes, event
 * names): contacts, companies, data attributes and events, one small class each.
 */
import { DataType, isInteger, isGroup, SearchNode } from './rules'

export type ContactRole = 'user' | 'lead'
export type AttributeModel = 'contact' | 'company'
type JsonObject = Record<string, unknown>

export interface SeedContact {
    id?: string
    email: string
    role: ContactRole
    external_id?: string
    name?: string
    /** Unix seconds. */
    updated_at?: number
    custom_attributes?: Record<string, unknown>
}

export interface StoredContact {
    type: 'contact'
    id: string
    workspace_id: string
    external_id: string | null
    role: ContactRole
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

export interface StoredCompany {
    type: 'company'
    id: string
    company_id: string
    app_id: string
    name: string | null
    remote_created_at: number | null
    created_at: number
    updated_at: number
    monthly_spend: number
    session_count: number
    user_count: number
    size: number | null
    website: string | null
    industry: string | null
    plan: { type: 'plan'; id: string; name: string } | Record<string, never>
    custom_attributes: Record<string, unknown>
}

export interface DataAttribute {
    name: string
    data_type: DataType
    model: AttributeModel
}

export interface StoredEvent {
    event_name: string
    created_at: number
    contact_id: string
    metadata: Record<string, unknown>
    /** How many POSTs carried it: more than 1 means Intercom deduplicated retries. */
    received: number
}

/** What the workspace counts (the model adds calls, routes and statuses). */
export interface WorkspaceCounters {
    eventsAccepted: number
    eventsDeduplicated: number
    contactsCreated: number
    contactsUpdated: number
    searches: number
}

/** What the workspace reads of the model's options, live (configure() changes them mid-run). */
export interface WorkspaceOptions {
    /** ms */
    clock: () => number
    searchLagMs: number
    maxEventNames: number
    /** Every searched email or external id is a user; any custom attribute exists, of any type. */
    openWorld: boolean
}

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
const userNotFound = () => new ApiError(404, 'not_found', 'User Not Found')
const seconds = (options: WorkspaceOptions) => Math.floor(options.clock() / 1000)

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

// --- data attributes ----------------------------------------------------------------------------------

/** Some names Intercom reserves for its own attributes; GET /data_attributes lists them as not custom. */
export const STANDARD_ATTRIBUTES: Record<AttributeModel, Record<string, DataType>> = {
    contact: {
        ...{ name: 'string', email: 'string', phone: 'string', external_id: 'string', role: 'string' },
        ...{ created_at: 'date', updated_at: 'date', signed_up_at: 'date', last_seen_at: 'date' },
        ...{ owner_id: 'integer', unsubscribed_from_emails: 'boolean' },
    },
    company: {
        ...{ name: 'string', company_id: 'string', website: 'string', industry: 'string', size: 'integer' },
        ...{
            monthly_spend: 'float',
            remote_created_at: 'date',
            user_count: 'integer',
            session_count: 'integer',
        },
    },
}

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

    constructor(private readonly options: WorkspaceOptions) {}

    define(attribute: DataAttribute, description = ''): AttributeRecord {
        const existing = this.byName.get(attribute.name)
        if (existing || isStandard(attribute.model, attribute.name)) {
            throw invalid(
                `You already have '${attribute.name}' in your ${modelLabel(existing?.model ?? attribute.model)} data. ` +
                    `To save this as new ${modelLabel(attribute.model)} data, use a different name.`
            )
        }
        const record = {
            ...attribute,
            id: this.byName.size + 1,
            description,
            messenger_writable: false,
            created_at: seconds(this.options),
        }
        this.byName.set(attribute.name, record)
        return record
    }

    list(model?: AttributeModel): AttributeRecord[] {
        return [...this.byName.values()].filter((a) => model === undefined || a.model === model)
    }

    /**
     * Each key must be an existing custom attribute of the model, with a value of its type (null clears it).
     * Contact endpoints never create attributes on the fly, the companies endpoint does (`define`). In an open
     * world the real workspace's attributes are unknown: any non-standard name is taken as it comes.
     */
    check(model: AttributeModel, values: JsonObject, define: boolean): void {
        for (const [name, value] of Object.entries(values)) {
            if (isStandard(model, name)) {
                throw invalid(
                    `'${name}' is a standard ${model} attribute, not a custom one: send it as a top-level field.`
                )
            }
            if (this.options.openWorld) continue
            if (define && !this.byName.has(name))
                this.define({ name, model, data_type: inferDataType(value) })
            const attribute = this.byName.get(name)
            if (!attribute || attribute.model !== model)
                throw invalid(`Custom attribute '${name}' does not exist`)
            if (value !== null && !fitsDataType(attribute.data_type, value)) {
                throw invalid(`Custom attribute '${name}' must be of type ${attribute.data_type}`)
            }
        }
    }
}

// --- contacts -----------------------------------------------------------------------------------------

interface ContactRecord extends Omit<StoredContact, 'type' | 'workspace_id' | 'companies'> {
    companyIds: string[]
    /** Clock ms from which search returns it: Intercom's search lags new contacts. */
    searchableAt: number
    /** Creation order, so that lookups through an index still list the oldest first. */
    seq: number
}

const CONTACT_FIELDS = [
    'role',
    'email',
    'external_id',
    'name',
    'phone',
    'signed_up_at',
    'last_seen_at',
] as const
const SHOWN_FIELDS = ['id', ...CONTACT_FIELDS, 'created_at', 'updated_at'] as const
type ShownField = (typeof SHOWN_FIELDS)[number]
export type ContactInput = Partial<Pick<ContactRecord, (typeof CONTACT_FIELDS)[number]>> & {
    custom_attributes?: JsonObject
}

/** Contacts listed under a key (lower-case email, external id): emails are not unique in Intercom. */
class ContactIndex {
    private readonly lists = new Map<string, ContactRecord[]>()

    constructor(private readonly keyOf: (record: ContactRecord) => string | null) {}

    add(record: ContactRecord): void {
        const key = this.keyOf(record)
        if (key !== null) this.lists.set(key, [...this.get(key), record])
    }

    remove(record: ContactRecord): void {
        const key = this.keyOf(record)
        const rest = key === null ? [] : this.get(key).filter((other) => other !== record)
        if (key !== null && rest.length > 0) this.lists.set(key, rest)
        else if (key !== null) this.lists.delete(key)
    }

    get(key: string): ContactRecord[] {
        return this.lists.get(key) ?? []
    }
}

/** Contacts by id, by email and by external id: a benchmark may seed many, and must not measure a scan. */
export class Contacts {
    private readonly byId = new Map<string, ContactRecord>()
    private readonly byEmail = new ContactIndex((c) => (c.email ? c.email.toLowerCase() : null))
    private readonly byExternalId = new ContactIndex((c) => c.external_id || null)
    private seq = 0

    constructor(
        private readonly options: WorkspaceOptions,
        private readonly counters: WorkspaceCounters,
        private readonly attributes: Attributes,
        readonly newId: () => string
    ) {}

    has(id: string): boolean {
        return this.byId.has(id)
    }

    /** Seeds existed before the run: searchable at once, duplicate emails allowed (old data has them). */
    seed(seed: SeedContact): { id: string } {
        if (seed.id !== undefined && this.byId.has(seed.id))
            throw new Error(`a contact with id ${seed.id} already exists`)
        if (seed.role !== 'user' && seed.role !== 'lead')
            throw new Error(`seed contact role must be user or lead`)
        this.attributes.check('contact', seed.custom_attributes ?? {}, true)
        const at = seed.updated_at ?? seconds(this.options)
        const record = this.insert({ ...seed, created_at: at, updated_at: at, searchableAt: 0 }, seed.id)
        record.signed_up_at = seed.role === 'user' ? at : null
        return { id: record.id }
    }

    create(input: ContactInput): StoredContact {
        const candidate = { ...input, role: input.role ?? 'user' }
        this.checkIdentity(candidate, undefined)
        this.attributes.check('contact', input.custom_attributes ?? {}, false)
        const now = seconds(this.options)
        const searchableAt = this.options.clock() + this.options.searchLagMs
        const record = this.insert({ ...candidate, created_at: now, updated_at: now, searchableAt })
        this.counters.contactsCreated += 1
        return this.toContact(record)
    }

    private insert(
        fields: ContactInput & Pick<ContactRecord, 'created_at' | 'updated_at' | 'searchableAt'>,
        id = this.newId()
    ): ContactRecord {
        const record: ContactRecord = {
            id,
            role: fields.role ?? 'user',
            email: fields.email ?? null,
            external_id: fields.external_id ?? null,
            name: fields.name ?? null,
            phone: fields.phone ?? null,
            created_at: fields.created_at,
            updated_at: fields.updated_at,
            signed_up_at: fields.signed_up_at ?? null,
            last_seen_at: fields.last_seen_at ?? null,
            custom_attributes: { ...fields.custom_attributes },
            companyIds: [],
            searchableAt: fields.searchableAt,
            seq: ++this.seq,
        }
        this.byId.set(record.id, record)
        this.byEmail.add(record)
        this.byExternalId.add(record)
        return record
    }

    update(id: string, input: ContactInput): StoredContact {
        const record = this.record(id)
        const next = { ...record }
        for (const key of CONTACT_FIELDS)
            if (input[key] !== undefined) Object.assign(next, { [key]: input[key] })
        this.checkIdentity(next, id)
        this.attributes.check('contact', input.custom_attributes ?? {}, false)
        this.byEmail.remove(record)
        this.byExternalId.remove(record)
        // Intercom merges custom attributes: keys not sent keep their value.
        const custom = { ...record.custom_attributes, ...input.custom_attributes }
        Object.assign(record, next, { custom_attributes: custom, updated_at: seconds(this.options) })
        this.byEmail.add(record)
        this.byExternalId.add(record)
        this.counters.contactsUpdated += 1
        return this.toContact(record)
    }

    get(id: string): StoredContact {
        return this.toContact(this.record(id))
    }

    record(id: string): ContactRecord {
        const record = this.byId.get(id)
        if (!record) throw userNotFound()
        return record
    }

    /** A user needs an email or an external_id; emails are unique per role, external ids across roles. */
    private checkIdentity(c: ContactInput, selfId: string | undefined): void {
        if (c.role === 'user' && !c.email && !c.external_id) {
            throw invalid('A user contact needs an email or an external_id')
        }
        if (c.email && !/^[^\s@]+@[^\s@]+$/.test(c.email)) throw invalid('Invalid email address')
        const sameEmail = c.email
            ? this.byEmail.get(c.email.toLowerCase()).filter((o) => o.role === c.role)
            : []
        const sameExternalId = c.external_id ? this.byExternalId.get(c.external_id) : []
        const conflict = [...sameEmail, ...sameExternalId].find((other) => other.id !== selfId)
        if (conflict) {
            throw new ApiError(
                409,
                'conflict',
                `A contact matching those details already exists with id=${conflict.id}`
            )
        }
    }

    /** Every match past its search lag, oldest first: no preference between users and leads. */
    search(query: SearchNode): StoredContact[] {
        const now = this.options.clock()
        this.counters.searches += 1
        let found = this.candidates(query).filter(
            (record) => record.searchableAt <= now && matches(record, query)
        )
        if (found.length === 0 && this.options.openWorld) found = this.invent(query)
        return found.sort((a, b) => a.seq - b.seq).map((record) => this.toContact(record))
    }

    /** Open world: the person searched for by email or external id is a user, from now on. */
    private invent(query: SearchNode): ContactRecord[] {
        if (isGroup(query) || query.operator !== '=' || typeof query.value !== 'string') return []
        if (query.field !== 'email' && query.field !== 'external_id') return []
        const now = seconds(this.options)
        return [
            this.insert({ [query.field]: query.value, created_at: now, updated_at: now, searchableAt: 0 }),
        ]
    }

    /** A superset of the matches: through an index for the common `field = value` query, else everyone. */
    private candidates(query: SearchNode): ContactRecord[] {
        if (isGroup(query) || query.operator !== '=' || typeof query.value !== 'string') return this.all()
        if (query.field === 'email') return this.byEmail.get(query.value.toLowerCase())
        if (query.field === 'external_id') return this.byExternalId.get(query.value)
        if (query.field === 'id') return this.byId.has(query.value) ? [this.record(query.value)] : []
        return this.all()
    }

    /** How POST /events finds its contact: `email` and `user_id` only ever designate users. */
    findForEvent(kind: 'id' | 'user_id' | 'email', value: string): ContactRecord {
        const list =
            kind === 'id'
                ? [this.byId.get(value)]
                : kind === 'user_id'
                  ? this.byExternalId.get(value)
                  : this.byEmail.get(value.toLowerCase())
        const found = list.find((c) => c && (kind === 'id' || c.role === 'user'))
        if (!found) throw userNotFound()
        return found
    }

    all(): ContactRecord[] {
        return [...this.byId.values()]
    }

    toContact(record: ContactRecord): StoredContact {
        const { companyIds } = record
        return {
            type: 'contact',
            ...(Object.fromEntries(SHOWN_FIELDS.map((key) => [key, record[key]])) as Pick<
                ContactRecord,
                ShownField
            >),
            workspace_id: APP_ID,
            custom_attributes: structuredClone(record.custom_attributes),
            companies: {
                type: 'list',
                data: companyIds.map((id) => ({ type: 'company', id, url: `/companies/${id}` })),
                url: `/contacts/${record.id}/companies`,
                total_count: companyIds.length,
                has_more: false,
            },
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

// --- companies ----------------------------------------------------------------------------------------

/** Companies by id and by the caller's company_id (POST /companies creates or updates by it). */
export class Companies {
    private readonly byId = new Map<string, StoredCompany>()
    private readonly byRemoteId = new Map<string, StoredCompany>()

    constructor(
        private readonly options: WorkspaceOptions,
        private readonly attributes: Attributes,
        private readonly contacts: Contacts
    ) {}

    has(id: string): boolean {
        return this.byId.has(id)
    }

    /** The companies endpoint stores "any other data about the company": unknown keys become attributes. */
    upsert(body: JsonObject): StoredCompany {
        const custom = (body.custom_attributes ?? {}) as JsonObject
        this.attributes.check('company', custom, true)
        const now = seconds(this.options)
        const id = body.company_id as string
        const company = this.byRemoteId.get(id) ?? this.create(id, now)
        for (const key of ['name', 'size', 'website', 'industry', 'remote_created_at'] as const) {
            if (body[key] !== undefined) Object.assign(company, { [key]: body[key] })
        }
        // Intercom: "this will truncate floats".
        if (typeof body.monthly_spend === 'number') company.monthly_spend = Math.trunc(body.monthly_spend)
        if (typeof body.plan === 'string')
            company.plan = { type: 'plan', id: `plan-${body.plan}`, name: body.plan }
        if (body.plan === null) company.plan = {}
        company.custom_attributes = { ...company.custom_attributes, ...custom }
        company.updated_at = now
        return structuredClone(company)
    }

    private create(companyId: string, now: number): StoredCompany {
        const company: StoredCompany = {
            ...{ type: 'company', id: this.contacts.newId(), company_id: companyId, app_id: APP_ID },
            ...{ name: null, remote_created_at: null, created_at: now, updated_at: now, monthly_spend: 0 },
            ...{ session_count: 0, user_count: 0, size: null, website: null, industry: null },
            ...{ plan: {}, custom_attributes: {} },
        }
        this.byId.set(company.id, company)
        this.byRemoteId.set(companyId, company)
        return company
    }

    attach(contactId: string, companyId: string): StoredCompany {
        const contact = this.contacts.record(contactId)
        const company = this.byId.get(companyId)
        if (!company) throw new ApiError(404, 'company_not_found', 'Company Not Found')
        if (!contact.companyIds.includes(company.id)) {
            contact.companyIds.push(company.id)
            company.user_count += 1
        }
        return structuredClone(company)
    }

    all(): StoredCompany[] {
        return [...this.byId.values()].map((company) => structuredClone(company))
    }
}

// --- events -------------------------------------------------------------------------------------------

/** Data events, deduplicated on contact + name + created_at like Intercom, within the event-name limit. */
export class Events {
    private readonly byKey = new Map<string, StoredEvent>()
    private readonly names = new Set<string>()

    constructor(
        private readonly options: WorkspaceOptions,
        private readonly counters: WorkspaceCounters
    ) {}

    /** A repeat is accepted but not stored twice. */
    track(event: Omit<StoredEvent, 'received'>): void {
        const key = JSON.stringify([event.contact_id, event.event_name, event.created_at])
        const existing = this.byKey.get(key)
        if (existing) {
            existing.received += 1
            this.counters.eventsDeduplicated += 1
            return
        }
        const { maxEventNames } = this.options
        if (!this.names.has(event.event_name) && this.names.size >= maxEventNames) {
            throw new ApiError(
                422,
                'parameter_invalid',
                `Cannot have more than ${maxEventNames} active event names`
            )
        }
        this.names.add(event.event_name)
        this.byKey.set(key, { ...event, received: 1 })
        this.counters.eventsAccepted += 1
    }

    all(): StoredEvent[] {
        return [...this.byKey.values()].map((event) => structuredClone(event))
    }

    clear(): void {
        this.byKey.clear()
        this.names.clear()
    }
}

export interface Workspace {
    attributes: Attributes
    contacts: Contacts
    companies: Companies
    events: Events
}

export function createWorkspace(options: WorkspaceOptions, counters: WorkspaceCounters): Workspace {
    const attributes = new Attributes(options)
    const newId = idMaker((id) => contacts.has(id) || companies.has(id))
    const contacts: Contacts = new Contacts(options, counters, attributes, newId)
    const companies: Companies = new Companies(options, attributes, contacts)
    return { attributes, contacts, companies, events: new Events(options, counters) }
}
