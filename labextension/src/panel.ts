/**
 * The "GPU Queue" sidebar: pools (GPUs used/free), my jobs with state and progress, the queue
 * with positions and reasons, my fair-share standing, and Cancel (with a confirmation).
 *
 * It polls the REST API: every ``activeInterval`` seconds while I have active jobs, every
 * ``idleInterval`` seconds otherwise, backing off on errors, and not at all while the panel is
 * hidden or the browser tab is in the background.
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import {
  ACTIVE,
  GPUQueueAPI,
  IJobSummary,
  IQueue,
  WAITING
} from './api';

/** The sidebar's settings (see schema/plugin.json). */
export interface ISidebarSettings {
  activeInterval: number;
  idleInterval: number;
  recentFinished: number;
  showAllUsers: boolean;
}

export const DEFAULT_SETTINGS: ISidebarSettings = {
  activeInterval: 2,
  idleInterval: 5,
  recentFinished: 5,
  showAllUsers: false
};

function esc(text: unknown): string {
  const div = document.createElement('div');
  div.textContent = String(text ?? '');
  return div.innerHTML;
}

/** ``1h02m``, ``3m05s``, ``42s``. */
export function duration(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s >= 3600) {
    return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
  }
  if (s >= 60) {
    return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  }
  return `${s}s`;
}

/** The sidebar widget. */
export class GPUQueuePanel extends Widget {
  constructor(api: GPUQueueAPI = new GPUQueueAPI()) {
    super();
    this.api = api;
    this.id = 'gpuqueue-sidebar';
    this.addClass('jp-GPUQueue');
    this.title.caption = 'GPU Queue';
    this.node.innerHTML =
      '<div class="jp-GPUQueue-header"><h2>GPU Queue</h2>' +
      '<span class="jp-GPUQueue-status"></span></div>' +
      '<div class="jp-GPUQueue-body"></div>';
    this.node.addEventListener('click', event => this.onClick(event));
    this.poll = new Poll({
      auto: false,
      factory: () => this.refresh(),
      frequency: {
        interval: DEFAULT_SETTINGS.idleInterval * 1000,
        backoff: true,
        max: 60 * 1000
      },
      name: 'gpuqueue:sidebar',
      standby: () => (this.isVisible ? 'when-hidden' : true)
    });
  }

  readonly api: GPUQueueAPI;
  readonly poll: Poll;
  settings: ISidebarSettings = { ...DEFAULT_SETTINGS };
  queue: IQueue | null = null;
  jobs: IJobSummary[] = [];
  private progress = new Map<string, { done: number; total: number }>();
  private seen = new Map<string, number>();
  private error = '';

  /** Apply new settings and re-plan the polling. */
  configure(settings: Partial<ISidebarSettings>): void {
    this.settings = { ...this.settings, ...settings };
    this.replan();
    void this.poll.refresh();
  }

  /** Start polling (the first fetch happens at once). */
  async start(): Promise<void> {
    await this.poll.start();
  }

  protected onAfterShow(): void {
    void this.poll.refresh();
  }

  dispose(): void {
    this.poll.dispose();
    super.dispose();
  }

  private hasActive(): boolean {
    return this.jobs.some(j => ACTIVE.includes(j.state));
  }

  private replan(): void {
    const seconds = this.hasActive()
      ? this.settings.activeInterval
      : this.settings.idleInterval;
    const interval = Math.max(1, seconds) * 1000;
    if (this.poll.frequency.interval !== interval) {
      this.poll.frequency = { interval, backoff: true, max: 60 * 1000 };
    }
  }

  /** Fetch everything and redraw; a failure shows and makes the poll back off. */
  async refresh(): Promise<void> {
    try {
      const [queue, jobs] = await Promise.all([
        this.api.queue(),
        this.api.jobs(this.settings.showAllUsers)
      ]);
      this.queue = queue;
      this.jobs = jobs;
      await Promise.all(
        jobs
          .filter(j => j.state === 'running' || j.state === 'starting')
          .map(j => this.updateProgress(j.id))
      );
      this.error = '';
    } catch (error) {
      this.error = String((error as Error).message ?? error);
      this.render();
      throw error;
    }
    this.replan();
    this.render();
  }

  private async updateProgress(jobId: string): Promise<void> {
    let after = this.seen.get(jobId) ?? 0;
    for (const ev of await this.api.events(jobId, after)) {
      after = ev.seq;
      if (ev.type === 'progress' && ev.data.total) {
        this.progress.set(jobId, { done: Number(ev.data.done ?? 0), total: Number(ev.data.total) });
      }
    }
    this.seen.set(jobId, after);
  }

  private async onClick(event: MouseEvent): Promise<void> {
    const target = (event.target as HTMLElement).closest(
      '[data-gpuqueue-cancel]'
    ) as HTMLElement | null;
    if (!target) {
      return;
    }
    const jobId = target.dataset.gpuqueueCancel as string;
    const job = this.jobs.find(j => j.id === jobId);
    const label = job?.name ? `${jobId} (${job.name})` : jobId;
    const result = await showDialog({
      title: 'Cancel job?',
      body: `Cancel ${label}? A running job gets its grace period to stop; its results are lost.`,
      buttons: [
        Dialog.cancelButton({ label: 'Keep running' }),
        Dialog.warnButton({ label: 'Cancel job' })
      ]
    });
    if (!result.button.accept) {
      return;
    }
    try {
      await this.api.cancel(jobId);
    } catch (error) {
      this.error = `cancel ${jobId}: ${(error as Error).message}`;
    }
    await this.poll.refresh();
  }

  private jobLine(j: IJobSummary): string {
    const bits: string[] = [];
    if (WAITING.includes(j.state) && j.pending) {
      const p = j.pending;
      const eta = p.eta_s !== null && p.eta_s !== undefined ? `, ETA ${duration(p.eta_s)}` : '';
      bits.push(`#${p.position ?? '?'}${eta}: ${p.message ?? p.reason ?? ''}`);
    } else if (j.state === 'running' || j.state === 'starting') {
      const gpus = j.gpu_ids && j.gpu_ids.length ? `GPUs ${j.gpu_ids.join(',')}` : `${j.gpus} GPUs`;
      const elapsed = j.started_at ? `, ${duration(Date.now() / 1000 - j.started_at)}` : '';
      bits.push(`on ${j.node ?? '?'} (${gpus})${elapsed}`);
    } else if (j.ended_at) {
      bits.push(`ended ${new Date(j.ended_at * 1000).toLocaleTimeString()}`);
    }
    return bits.join(' ');
  }

  /** Redraw from ``queue`` and ``jobs``. */
  render(): void {
    const status = this.node.querySelector('.jp-GPUQueue-status') as HTMLElement;
    status.textContent = this.error
      ? `⚠ ${this.error}`
      : `updated ${new Date().toLocaleTimeString()}`;
    status.classList.toggle('jp-GPUQueue-error', !!this.error);
    const body = this.node.querySelector('.jp-GPUQueue-body') as HTMLElement;
    if (!this.queue) {
      body.innerHTML = '<p class="jp-GPUQueue-empty">loading…</p>';
      return;
    }
    const q = this.queue;
    const pools = Object.entries(q.pools ?? {})
      .map(([name, p]) => {
        const pct = p.gpus_total ? (100 * p.gpus_used) / p.gpus_total : 0;
        return (
          `<tr class="jp-GPUQueue-pool" data-pool="${esc(name)}"><td>${esc(name)}</td>` +
          `<td><div class="jp-GPUQueue-bar"><div style="width:${pct.toFixed(0)}%"></div></div></td>` +
          `<td>${p.gpus_used}/${p.gpus_total} used, ${p.gpus_total - p.gpus_used} free</td>` +
          `<td>${p.running} running, ${p.queued} queued</td></tr>`
        );
      })
      .join('');
    const active = this.jobs.filter(j => ACTIVE.includes(j.state));
    const finished = this.jobs
      .filter(j => !ACTIVE.includes(j.state))
      .slice(0, this.settings.recentFinished);
    const row = (j: IJobSummary): string => {
      const prog = this.progress.get(j.id);
      const pct = prog && prog.total ? Math.min(100, (100 * prog.done) / prog.total) : null;
      const bar =
        pct !== null && ACTIVE.includes(j.state)
          ? `<div class="jp-GPUQueue-bar jp-GPUQueue-progress" title="${prog!.done}/${prog!.total}">` +
            `<div style="width:${pct.toFixed(0)}%"></div></div> ${pct.toFixed(0)}%`
          : '';
      const cancel = ACTIVE.includes(j.state)
        ? `<button class="jp-Button jp-mod-styled jp-mod-warn jp-GPUQueue-cancel" ` +
          `data-gpuqueue-cancel="${esc(j.id)}" title="cancel ${esc(j.id)}">Cancel</button>`
        : '';
      const owner = this.settings.showAllUsers ? ` <span class="jp-GPUQueue-owner">${esc(j.owner)}</span>` : '';
      return (
        `<li class="jp-GPUQueue-job" data-job-id="${esc(j.id)}" data-state="${esc(j.state)}">` +
        `<div><span class="jp-GPUQueue-state jp-GPUQueue-state-${esc(j.state)}">${esc(j.state)}</span> ` +
        `<b>${esc(j.name || j.id)}</b>${owner} <code>${esc(j.id)}</code> ${cancel}</div>` +
        `<div class="jp-GPUQueue-detail">${esc(this.jobLine(j))} ${bar}</div></li>`
      );
    };
    const waiting = this.jobs
      .filter(j => WAITING.includes(j.state) && j.pending)
      .sort((a, b) => (a.pending!.position ?? 0) - (b.pending!.position ?? 0));
    const fair = fairShare(q);
    body.innerHTML =
      `<h3>Pools</h3><table class="jp-GPUQueue-pools">${pools}</table>` +
      `<h3>My jobs</h3>` +
      (active.length
        ? `<ul class="jp-GPUQueue-jobs jp-GPUQueue-active">${active.map(row).join('')}</ul>`
        : '<p class="jp-GPUQueue-empty">no active jobs</p>') +
      (finished.length
        ? `<h4>Recently finished</h4><ul class="jp-GPUQueue-jobs jp-GPUQueue-finished">${finished.map(row).join('')}</ul>`
        : '') +
      `<h3>Queue</h3>` +
      (waiting.length
        ? `<ol class="jp-GPUQueue-queue">${waiting
            .map(
              j =>
                `<li value="${j.pending!.position ?? 0}">${esc(j.name || j.id)}: ` +
                `${esc(j.pending!.message ?? j.pending!.reason ?? '')}</li>`
            )
            .join('')}</ol>`
        : '<p class="jp-GPUQueue-empty">nothing waiting</p>') +
      `<h3>Fair share</h3>` +
      (fair.length
        ? `<table class="jp-GPUQueue-fair">${fair
            .map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`)
            .join('')}</table>`
        : '<p class="jp-GPUQueue-empty">no usage recorded yet</p>');
  }
}

/** My standing from the queue summary's optional, free-form ``users`` part. */
export function fairShare(q: IQueue): [string, string][] {
  const me = q.me?.user;
  const users: any = q.users;
  let mine: any = undefined;
  if (Array.isArray(users)) {
    mine = users.find(u => u && (u.user === me || u.name === me));
  } else if (users && typeof users === 'object') {
    mine = users[me];
  }
  const rows: [string, string][] = [];
  const fmt = (v: any): string =>
    typeof v === 'number' && !Number.isInteger(v) ? v.toPrecision(3) : String(v);
  if (mine && typeof mine === 'object') {
    for (const [k, v] of Object.entries(mine)) {
      if (k !== 'user' && k !== 'name') {
        rows.push([k, typeof v === 'object' ? JSON.stringify(v) : fmt(v)]);
      }
    }
  } else if (mine !== undefined) {
    rows.push(['standing', fmt(mine)]);
  }
  const counts = Object.entries(q.me?.jobs ?? {});
  if (counts.length) {
    rows.push(['my active jobs', counts.map(([k, v]) => `${v} ${k}`).join(', ')]);
  }
  return rows;
}
