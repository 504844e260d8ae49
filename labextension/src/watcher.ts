/**
 * The job-end watcher: a notification when one of my jobs ends, wherever I am in JupyterLab.
 *
 * It follows my jobs that this page saw queued or running, or that were submitted after the
 * page loaded; when one of them reaches a terminal state, ``notify`` is called once for it.
 * Jobs already finished when the page loaded, and other users' jobs, never notify.
 *
 * It reads every listing the sidebar fetches (``observe``), and asks the REST API itself only
 * when no listing came for ``watchInterval`` seconds (the sidebar is hidden) while a job it
 * follows is queued or running, backing off up to 60 s while the server does not answer, and
 * never from a browser tab in the background. ``check()`` asks once: at the page's start, and
 * when the server announces a job submitted through it.
 */
import { Poll } from '@lumino/polling';

import { GPUQueueAPI, IJob, IJobSummary, IQueue } from './api';
import { duration } from './panel';

/** The watcher's settings (see schema/plugin.json). */
export interface IWatcherSettings {
  notifyOnJobEnd: boolean;
  watchInterval: number;
}

/** The defaults of the settings schema. */
export const DEFAULT_WATCHER_SETTINGS: IWatcherSettings = {
  notifyOnJobEnd: true,
  watchInterval: 10
};

/** A job that ended: as listed, and in full (for its error) when it failed or timed out. */
export interface IJobEnd {
  job: IJobSummary;
  detail: IJob | null;
}

/** Follows my jobs and calls ``notify`` once for each that ends (see the module comment). */
export class JobWatcher {
  constructor(
    readonly api: GPUQueueAPI,
    readonly notify: (end: IJobEnd) => void
  ) {
    this.poll = new Poll({
      auto: false,
      factory: () => this.fetch(),
      frequency: this.frequency(),
      name: 'gpuqueue:watcher',
      standby: () => !this.due()
    });
  }

  readonly poll: Poll;
  settings: IWatcherSettings = { ...DEFAULT_WATCHER_SETTINGS };
  /** The jobs followed that were queued or running at the last look. */
  readonly live = new Set<string>();
  private known = new Set<string>();
  private ended = new Set<string>();
  /** The newest ``created_at`` of my jobs at the first look (null before it). */
  private baseline: number | null = null;
  private lastListing = 0;
  private wanted = true;
  private kick = 0;

  /** Start: the first look happens at once. */
  async start(): Promise<void> {
    await this.poll.start();
  }

  /** Apply new settings: turned off, it forgets and asks nothing; turned on, it looks again. */
  configure(settings: Partial<IWatcherSettings>): void {
    const was = this.settings.notifyOnJobEnd;
    this.settings = { ...this.settings, ...settings };
    const frequency = this.frequency();
    if (this.poll.frequency.interval !== frequency.interval) {
      this.poll.frequency = frequency;
    }
    if (!this.settings.notifyOnJobEnd) {
      this.live.clear();
      this.known.clear();
      this.baseline = null;
    } else if (!was) {
      this.check();
    }
  }

  /** Ask once, in a quarter of a second (a job was submitted: a burst of them is one look). */
  check(): void {
    if (this.kick) {
      return;
    }
    this.kick = window.setTimeout(() => {
      this.kick = 0;
      this.wanted = true;
      void this.poll.refresh();
    }, 250);
  }

  /** Read a listing (the sidebar's or the watcher's own): follow live jobs, notify ends. */
  observe(queue: IQueue, jobs: IJobSummary[]): void {
    this.lastListing = Date.now();
    this.wanted = false;
    if (!this.settings.notifyOnJobEnd) {
      return;
    }
    const groups = queue.state_groups;
    const mine = jobs.filter(j => j.owner === queue.me.user);
    const first = this.baseline === null;
    if (first) {
      this.baseline = Math.max(0, ...mine.map(j => j.created_at));
    }
    const listed = new Set(mine.map(j => j.id));
    for (const id of this.live) {
      if (!listed.has(id)) {
        this.live.delete(id); // gone from the store: nothing more to learn
      }
    }
    for (const j of mine) {
      if (groups.live.includes(j.state)) {
        this.live.add(j.id);
      } else if (groups.terminal.includes(j.state)) {
        const bornHere = !first && !this.known.has(j.id) && j.created_at >= this.baseline!;
        if ((this.live.delete(j.id) || bornHere) && !this.ended.has(j.id)) {
          this.ended.add(j.id);
          void this.announce(j);
        }
      }
      this.known.add(j.id);
    }
  }

  dispose(): void {
    window.clearTimeout(this.kick);
    this.poll.dispose();
  }

  private frequency() {
    const interval = Math.max(1, this.settings.watchInterval) * 1000;
    return { interval, backoff: true, max: 60 * 1000 };
  }

  /** Whether to ask now: on, the tab visible, and a look was asked for or no listing came
   * for ``watchInterval`` while a followed job is live. */
  private due(): boolean {
    if (!this.settings.notifyOnJobEnd || document.hidden) {
      return false;
    }
    const stale = Date.now() - this.lastListing >= this.poll.frequency.interval - 250;
    return this.wanted || (this.live.size > 0 && stale);
  }

  private async fetch(): Promise<void> {
    const [queue, jobs] = await Promise.all([this.api.queue(), this.api.jobs(false)]);
    this.observe(queue, jobs);
  }

  private async announce(job: IJobSummary): Promise<void> {
    let detail: IJob | null = null;
    if (endKind(job.state) === 'error') {
      detail = await this.api.job(job.id).catch(() => null);
    }
    this.notify({ job, detail });
  }
}

/** The notification's kind: success (succeeded), error (failed, timed out), else info. */
export function endKind(state: string): 'success' | 'error' | 'info' {
  return state === 'succeeded' ? 'success' : ['failed', 'timed_out'].includes(state) ? 'error' : 'info';
}

const VERBS: { [state: string]: string } = {
  succeeded: 'succeeded',
  failed: 'failed',
  cancelled: 'was cancelled',
  timed_out: 'timed out'
};

/** JupyterLab cuts a notification's text at this length. */
const MAX_MESSAGE = 140;

/** ``name (id) succeeded after 1m05s``; for a failure or a timeout, the reason on a 2nd line. */
export function endMessage({ job, detail }: IJobEnd): string {
  const label = job.name ? `${job.name} (${job.id})` : job.id;
  const verb = VERBS[job.state] ?? `ended ${job.state}`;
  const ran =
    job.started_at && job.ended_at
      ? ` after ${duration(job.ended_at - job.started_at)}`
      : job.started_at
        ? ''
        : ' before it started';
  const head = `${label} ${verb}${ran}`;
  let why = (detail?.error ?? '').trim().split('\n')[0];
  if (!why && job.state === 'timed_out' && detail?.spec.timeout_s) {
    why = `its time limit is ${duration(detail.spec.timeout_s)}`;
  }
  if (!why || endKind(job.state) !== 'error') {
    return head;
  }
  const room = MAX_MESSAGE - head.length - 1;
  return `${head}\n${why.length > room ? why.slice(0, Math.max(0, room - 1)) + '…' : why}`;
}
