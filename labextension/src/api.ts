/**
 * The gpuqueue REST API, as the sidebar and the job-end watcher use it (GET queue, GET jobs,
 * GET jobs/ID, GET jobs/ID/events, POST jobs/ID/cancel, DELETE jobs/ID), through the Jupyter
 * server's authenticated connection.
 */
import { URLExt } from '@jupyterlab/coreutils';
import { ServerConnection } from '@jupyterlab/services';

/** Why a queued job waits, where it stands, when it may start. */
export interface IPending {
  reason?: string;
  message?: string;
  position?: number;
  eta_s?: number | null;
}

/** A job as ``GET gpuqueue/api/jobs`` lists it. */
export interface IJobSummary {
  id: string;
  name?: string | null;
  owner: string;
  state: string;
  priority: string;
  gpus: number;
  pool?: string | null;
  created_at: number;
  started_at?: number | null;
  ended_at?: number | null;
  node?: string | null;
  gpu_ids?: number[];
  attempts: number;
  pending?: IPending | null;
}

/** The part of ``GET gpuqueue/api/jobs/ID`` (a job in full) that the watcher reads. */
export interface IJob {
  id: string;
  state: string;
  /** Why it failed, in one line (``ValueError: bad lr``, ``the job process exited with code 3``). */
  error?: string | null;
  spec: { name?: string | null; timeout_s?: number | null };
}

/** ``DELETE gpuqueue/api/jobs/ID``: the job deleted and what went with it. */
export interface IJobDeleted {
  id: string;
  owner: string;
  state: string;
  /** ``record``, ``events``, ``logs``, ``results``, ``payload``, ``checkpoints``. */
  deleted: string[];
  /** Cluster mode: when its checkpoints on the workers' shared root go. */
  note?: string;
}

/** One pool in ``GET gpuqueue/api/queue``. */
export interface IPool {
  gpus_total: number;
  gpus_used: number;
  queued: number;
  running: number;
}

/** One GPU of the map: ``mine`` (the caller's job), ``busy`` (another user's), ``free``, ``down``. */
export interface IGpu {
  index: number;
  state: 'free' | 'mine' | 'busy' | 'down';
  /** The job on it: the caller's own (every job for an admin); null for another user's. */
  job: { id: string; name?: string | null; owner: string; priority: string } | null;
}

/** One node of the map. */
export interface IGpuNode {
  node: string;
  pool: string | null;
  up: boolean;
  gpus: IGpu[];
}

/** The caller's fair-share standing (null where the policy keeps no usage). */
export interface IShare {
  usage_gpu_hours: number;
  weight: number;
  half_life_s: number | null;
  gpus_held: number;
  running: number;
  place: number;
  of: number;
}

/** ``GET gpuqueue/api/queue`` (docs/openapi.yaml). */
export interface IQueue {
  mode: string;
  pools: { [name: string]: IPool };
  me: { user: string; admin: boolean; jobs: { [state: string]: number } };
  gpu_map?: IGpuNode[];
  share?: IShare | null;
  warning?: string;
  /** The groups of job states, defined once on the server (gpuqueue/queue/states.py). */
  state_groups: IStateGroups;
}

/** Job states by group: waiting in line, holding GPUs, either of those, finished. */
export interface IStateGroups {
  waiting: string[];
  active: string[];
  live: string[];
  terminal: string[];
}

/** Until the first ``GET /queue`` answers: no job is in any group. */
export const NO_GROUPS: IStateGroups = { waiting: [], active: [], live: [], terminal: [] };

/** One event of a job's stream. */
export interface IEvent {
  seq: number;
  time: number;
  type: string;
  data: { [key: string]: any };
}

/** An error with the server's own message. */
export class ApiError extends Error {}

/** Calls the REST API under ``<base_url>gpuqueue/api/``. */
export class GPUQueueAPI {
  constructor(
    readonly settings: ServerConnection.ISettings = ServerConnection.makeSettings()
  ) {}

  /** Requests made so far (for the idle-load measurement). */
  requests = 0;

  private async call<T>(path: string, init: RequestInit = {}): Promise<T> {
    const url = URLExt.join(this.settings.baseUrl, 'gpuqueue/api', path);
    this.requests += 1;
    let response: Response;
    try {
      response = await ServerConnection.makeRequest(url, init, this.settings);
    } catch (error) {
      throw new ApiError(`cannot reach the Jupyter server: ${error}`);
    }
    const text = await response.text();
    let body: any = null;
    try {
      body = text ? JSON.parse(text) : null;
    } catch {
      body = null;
    }
    if (!response.ok) {
      throw new ApiError(body?.message ?? `${response.status} ${response.statusText}`);
    }
    return body as T;
  }

  queue(): Promise<IQueue> {
    return this.call<IQueue>('queue');
  }

  async jobs(all = false): Promise<IJobSummary[]> {
    const body = await this.call<{ jobs: IJobSummary[] }>(`jobs?all=${all ? 1 : 0}`);
    return body.jobs;
  }

  job(jobId: string): Promise<IJob> {
    return this.call<IJob>(`jobs/${encodeURIComponent(jobId)}`);
  }

  async events(jobId: string, after: number): Promise<IEvent[]> {
    // a page that stopped before the end names where the next starts (a job whose dropped
    // output is still being deleted: the server reads a bounded number of records a request)
    const out: IEvent[] = [];
    for (;;) {
      const body = await this.call<{ events: IEvent[]; next?: number }>(
        `jobs/${encodeURIComponent(jobId)}/events?after=${after}`
      );
      out.push(...body.events);
      if (typeof body.next !== 'number') {
        return out;
      }
      after = body.next;
    }
  }

  cancel(jobId: string): Promise<IJobSummary> {
    return this.call<IJobSummary>(`jobs/${encodeURIComponent(jobId)}/cancel`, {
      method: 'POST'
    });
  }

  /** Delete a finished job and everything kept for it (``gpuqueue rm``); a live job, or one a
   * live job resumes from, is refused (409), another user's job is missing (404). */
  deleteJob(jobId: string): Promise<IJobDeleted> {
    return this.call<IJobDeleted>(`jobs/${encodeURIComponent(jobId)}`, { method: 'DELETE' });
  }
}
