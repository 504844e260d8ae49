/**
 * The "GPU Queue" sidebar: the cluster (pools, and a map of every node's GPUs: mine, another
 * user's, free, down), my jobs with state and progress (waiting ones with their place in line,
 * expected start and reason), my fair-share standing in words, Cancel on a live job and Delete on a
 * finished one (each with a confirmation; a refusal's message shows in the status line).
 *
 * It polls the REST API: every ``activeInterval`` seconds while I have active jobs, every
 * ``idleInterval`` seconds otherwise, backing off on errors, and not at all while the panel is
 * hidden or the browser tab is in the background. Each listing it fetches is also given to
 * ``onRefreshed`` (the job-end watcher reads it instead of asking again).
 */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Poll } from '@lumino/polling';
import { Widget } from '@lumino/widgets';

import {
  GPUQueueAPI,
  IGpu,
  IGpuNode,
  IJobSummary,
  IPending,
  IQueue,
  IStateGroups,
  NO_GROUPS
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

/** What a job row's button does: a confirmation dialog, then a request. */
interface IRowAction {
  /** The button's text, and its aria-label's verb. */
  button: string;
  /** The rows that get it: a job whose state is in this group (``IStateGroups``). */
  group: keyof IStateGroups;
  title: string;
  body: (label: string) => string;
  keep: string;
  confirm: string;
  run: (api: GPUQueueAPI, jobId: string) => Promise<unknown>;
}

/** The row buttons, by the name their ``data-gpuqueue-action`` carries. */
const ACTIONS: { [name: string]: IRowAction } = {
  cancel: {
    button: 'Cancel',
    group: 'live',
    title: 'Cancel job?',
    body: label =>
      `Cancel ${label}? A running job gets its grace period to stop; its results are lost.`,
    keep: 'Keep running',
    confirm: 'Cancel job',
    run: (api, jobId) => api.cancel(jobId)
  },
  delete: {
    button: 'Delete',
    group: 'terminal',
    title: 'Delete job?',
    body: label =>
      `Delete ${label}? Its results, logs and checkpoints go with it, for good ` +
      '(they stop counting against your limits).',
    keep: 'Keep it',
    confirm: 'Delete job',
    run: (api, jobId) => api.deleteJob(jobId)
  }
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
      '<span class="jp-GPUQueue-status jp-GPUQueue-nowrap"></span></div>' +
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
  /** Called after each successful fetch with the queue and the jobs listed. */
  onRefreshed: ((queue: IQueue, jobs: IJobSummary[]) => void) | null = null;
  settings: ISidebarSettings = { ...DEFAULT_SETTINGS };
  queue: IQueue | null = null;
  jobs: IJobSummary[] = [];
  private progress = new Map<string, { done: number; total: number }>();
  private seen = new Map<string, number>();
  /** Why the last fetch failed ('' when it did not). */
  private error = '';
  /** The server's answer to the last refused Cancel or Delete, until the next one is clicked. */
  private actionError = '';

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

  /** The server's groups of job states (from the last ``GET /queue``). */
  private get groups(): IStateGroups {
    return this.queue?.state_groups ?? NO_GROUPS;
  }

  private hasActive(): boolean {
    return this.jobs.some(j => this.groups.live.includes(j.state));
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
          .filter(j => queue.state_groups.active.includes(j.state))
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
    if (this.queue) {
      this.onRefreshed?.(this.queue, this.jobs);
    }
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

  /** ``j-… (demo-train)``, or the id alone for a job without a name. */
  private label(jobId: string, job = this.jobs.find(j => j.id === jobId)): string {
    return job?.name ? `${jobId} (${job.name})` : jobId;
  }

  private async onClick(event: MouseEvent): Promise<void> {
    const target = (event.target as HTMLElement).closest(
      '[data-gpuqueue-action]'
    ) as HTMLElement | null;
    const name = target?.dataset.gpuqueueAction ?? '';
    const action = ACTIONS[name];
    if (!target || !action) {
      return;
    }
    const jobId = target.dataset.jobId as string;
    const result = await showDialog({
      title: action.title,
      body: action.body(this.label(jobId)),
      buttons: [
        Dialog.cancelButton({ label: action.keep }),
        Dialog.warnButton({ label: action.confirm })
      ]
    });
    if (!result.button.accept) {
      return;
    }
    this.actionError = '';
    try {
      await action.run(this.api, jobId);
      if (name === 'delete') {
        // gone at once, not at the next poll
        this.jobs = this.jobs.filter(j => j.id !== jobId);
        this.progress.delete(jobId);
        this.seen.delete(jobId);
      }
    } catch (error) {
      this.actionError = `${name} ${jobId}: ${(error as Error).message}`;
    }
    this.render();
    await this.poll.refresh();
  }

  /** A row's button for ``name`` (``ACTIONS``), named after its job for a screen reader. */
  private actionButton(name: string, j: IJobSummary): string {
    const action = ACTIONS[name];
    const label = esc(`${action.button} job ${this.label(j.id, j)}`);
    return (
      `<button class="jp-Button jp-mod-styled jp-mod-warn jp-GPUQueue-action jp-GPUQueue-${name}" ` +
      `data-gpuqueue-action="${name}" data-job-id="${esc(j.id)}" title="${label}" ` +
      `aria-label="${label}">${action.button}</button>`
    );
  }

  private jobLine(j: IJobSummary): string {
    const bits: string[] = [];
    if (this.groups.waiting.includes(j.state) && j.pending) {
      bits.push(waitingLine(j.pending));
    } else if (this.groups.active.includes(j.state)) {
      const ids = j.gpu_ids ?? [];
      const gpus = ids.length ? `GPU${ids.length === 1 ? '' : 's'} ${ids.join(',')}` : j.gpus ? count(j.gpus, 'GPU') : 'CPU';
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
    const error = this.error || this.actionError;
    status.textContent = error ? `⚠ ${error}` : `updated ${new Date().toLocaleTimeString()}`;
    status.classList.toggle('jp-GPUQueue-error', !!error);
    // a message wraps; the time stays on one line
    status.classList.toggle('jp-GPUQueue-nowrap', !error);
    status.setAttribute('role', error ? 'alert' : 'status');
    const body = this.node.querySelector('.jp-GPUQueue-body') as HTMLElement;
    // a redraw replaces the buttons: the one a keyboard user is on gets the focus back
    const focused = document.activeElement as HTMLElement | null;
    const refocus =
      focused && body.contains(focused) && focused.dataset.gpuqueueAction
        ? `[data-gpuqueue-action="${focused.dataset.gpuqueueAction}"]` +
          `[data-job-id="${CSS.escape(focused.dataset.jobId ?? '')}"]`
        : null;
    if (!this.queue) {
      body.innerHTML = '<p class="jp-GPUQueue-empty">loading…</p>';
      return;
    }
    const q = this.queue;
    // running first, then waiting jobs in their order in line
    const rank = (j: IJobSummary): number =>
      this.groups.waiting.includes(j.state) ? 1000 + (j.pending?.position || 999) : 0;
    const active = this.jobs.filter(j => this.groups.live.includes(j.state)).sort((a, b) => rank(a) - rank(b));
    const finished = this.jobs
      .filter(j => !this.groups.live.includes(j.state))
      .slice(0, this.settings.recentFinished);
    const row = (j: IJobSummary): string => {
      const prog = this.progress.get(j.id);
      const pct = prog && prog.total ? Math.min(100, (100 * prog.done) / prog.total) : null;
      const bar =
        pct !== null && this.groups.live.includes(j.state)
          ? `<span class="jp-GPUQueue-nowrap"><span class="jp-GPUQueue-bar jp-GPUQueue-progress" ` +
            `title="${prog!.done}/${prog!.total}"><span style="width:${pct.toFixed(0)}%"></span></span> ` +
            `${pct.toFixed(0)}%</span>`
          : '';
      const buttons = Object.keys(ACTIONS)
        .filter(name => this.groups[ACTIONS[name].group].includes(j.state))
        .map(name => this.actionButton(name, j))
        .join('');
      const owner = this.settings.showAllUsers ? ` <span class="jp-GPUQueue-owner">${esc(j.owner)}</span>` : '';
      return (
        `<li class="jp-GPUQueue-job" data-job-id="${esc(j.id)}" data-state="${esc(j.state)}">` +
        `<div class="jp-GPUQueue-jobhead">${buttons}<span class="jp-GPUQueue-state jp-GPUQueue-state-${esc(j.state)}">` +
        `${esc(j.state)}</span> <b>${esc(j.name || j.id)}</b>${owner} <code>${esc(j.id)}</code></div>` +
        `<div class="jp-GPUQueue-detail">${esc(this.jobLine(j))} ${bar}</div></li>`
      );
    };
    body.innerHTML =
      (q.warning ? `<p class="jp-GPUQueue-error">${esc(q.warning)}</p>` : '') +
      `<h3>Cluster</h3>${clusterView(q)}` +
      `<h3>My jobs</h3>` +
      (active.length
        ? `<ul class="jp-GPUQueue-jobs jp-GPUQueue-active">${active.map(row).join('')}</ul>`
        : '<p class="jp-GPUQueue-empty">no active jobs</p>') +
      (finished.length
        ? `<h4>Recently finished</h4><ul class="jp-GPUQueue-jobs jp-GPUQueue-finished">${finished.map(row).join('')}</ul>`
        : '') +
      `<h3>Fair share</h3>${shareView(q)}`;
    if (refocus) {
      (body.querySelector(refocus) as HTMLElement | null)?.focus();
    }
  }
}

/** ``n`` and ``noun`` in words: ``1 GPU``, ``2 GPUs``, ``0 jobs``. */
export function count(n: number, noun: string): string {
  return `${n} ${noun}${n === 1 ? '' : 's'}`;
}

/** ``1st``, ``2nd``, ``3rd``, ``4th``, ``11th``, ``22nd``. */
export function ordinal(n: number): string {
  const tens = n % 100;
  const suffix = tens >= 11 && tens <= 13 ? 'th' : ({ 1: 'st', 2: 'nd', 3: 'rd' } as any)[n % 10] ?? 'th';
  return `${n}${suffix}`;
}

/** GPU-hours the way a person writes them: ``0 GPU-hours``, ``0.42 GPU-hours``, ``1 GPU-hour``. */
export function gpuHours(h: number): string {
  const n = h === 0 ? '0' : h >= 100 ? h.toFixed(0) : h >= 10 ? h.toFixed(1) : h.toPrecision(2).replace(/\.?0+$/, '');
  return `${n} GPU-hour${n === '1' ? '' : 's'}`;
}

/** A long span in words: ``7 days``, ``1 day``, ``12 hours``, else ``duration``. */
export function span(seconds: number): string {
  const round = (x: number): string => String(Math.round(x * 10) / 10);
  if (seconds >= 86400) {
    const d = round(seconds / 86400);
    return `${d} day${d === '1' ? '' : 's'}`;
  }
  if (seconds >= 3600) {
    const h = round(seconds / 3600);
    return `${h} hour${h === '1' ? '' : 's'}`;
  }
  return duration(seconds);
}

/** Why a job waits, in words: place in line, expected start, the scheduler's reason. */
export function waitingLine(p: IPending): string {
  const place = p.position ? `${ordinal(p.position)} in line` : 'waiting';
  const eta =
    p.eta_s !== null && p.eta_s !== undefined
      ? `expected to start in ${duration(p.eta_s)}`
      : 'start time not known yet';
  const why = p.message ?? p.reason ?? '';
  return [place, eta, why].filter(Boolean).join(' · ');
}

/** A stable colour for a user (admins see every user's GPUs in their own colour). */
export function userColour(user: string): string {
  let h = 0;
  for (const c of user) {
    h = (h * 31 + c.charCodeAt(0)) % 360;
  }
  return `hsl(${h}, 55%, 50%)`;
}

function gpuTitle(node: IGpuNode, g: IGpu, me: string): string {
  const where = `${node.node} GPU ${g.index}`;
  if (g.state === 'down') {
    return `${where}: node not answering`;
  }
  if (g.state === 'free') {
    return `${where}: free`;
  }
  if (!g.job) {
    return `${where}: busy (other user)`;
  }
  const whose = g.job.owner === me ? 'your job' : `${g.job.owner}'s job`;
  return `${where}: ${whose} ${g.job.name ? g.job.name + ' ' : ''}(${g.job.id})`;
}

/** Pools with their GPUs in use, and the map: one square per GPU, nodes grouped by pool. */
export function clusterView(q: IQueue): string {
  const me = q.me?.user ?? '';
  const admin = !!q.me?.admin;
  const nodes = q.gpu_map ?? [];
  const owners = new Set<string>();
  const pools = Object.entries(q.pools ?? {}).map(([name, p]) => {
    const free = p.gpus_total - p.gpus_used;
    const pct = p.gpus_total ? (100 * p.gpus_used) / p.gpus_total : 0;
    const rows = nodes
      .filter(n => n.pool === name)
      .map(n => {
        const squares = n.gpus
          .map(g => {
            const colour = admin && g.job && g.state !== 'mine' ? ` style="background:${userColour(g.job.owner)}"` : '';
            if (g.job && g.job.owner !== me) {
              owners.add(g.job.owner);
            }
            return (
              `<span class="jp-GPUQueue-gpu" data-state="${g.state}" data-index="${g.index}"` +
              `${g.job ? ` data-job-id="${esc(g.job.id)}"` : ''}${colour} ` +
              `title="${esc(gpuTitle(n, g, me))}"></span>`
            );
          })
          .join('');
        return (
          `<div class="jp-GPUQueue-node" data-node="${esc(n.node)}" data-up="${n.up}">` +
          `<span class="jp-GPUQueue-nodename" title="${esc(n.node)}${n.up ? '' : ' (not answering)'}">` +
          `${esc(n.node)}</span><span class="jp-GPUQueue-gpus">${squares}</span></div>`
        );
      })
      .join('');
    return (
      `<div class="jp-GPUQueue-pool" data-pool="${esc(name)}"><div class="jp-GPUQueue-poolhead">` +
      `<b class="jp-GPUQueue-poolname" title="pool ${esc(name)}">${esc(name)}</b>` +
      `<span class="jp-GPUQueue-bar" title="${p.gpus_used} of ${p.gpus_total} GPUs in use">` +
      `<span style="width:${pct.toFixed(0)}%"></span></span>` +
      `<span class="jp-GPUQueue-nowrap">${free} of ${p.gpus_total} free</span>` +
      `<span class="jp-GPUQueue-nowrap">${p.running} running</span>` +
      `<span class="jp-GPUQueue-nowrap">${p.queued} waiting</span></div>${rows}</div>`
    );
  });
  const anyDown = nodes.some(n => !n.up);
  const legend =
    `<div class="jp-GPUQueue-legend"><span class="jp-GPUQueue-nowrap"><span class="jp-GPUQueue-gpu" data-state="mine"></span> yours</span>` +
    (admin
      ? [...owners]
          .sort()
          .map(
            o =>
              `<span class="jp-GPUQueue-nowrap"><span class="jp-GPUQueue-gpu" data-state="busy" ` +
              `style="background:${userColour(o)}"></span> ${esc(o)}</span>`
          )
          .join('')
      : `<span class="jp-GPUQueue-nowrap"><span class="jp-GPUQueue-gpu" data-state="busy"></span> other user</span>`) +
    `<span class="jp-GPUQueue-nowrap"><span class="jp-GPUQueue-gpu" data-state="free"></span> free</span>` +
    (anyDown ? `<span class="jp-GPUQueue-nowrap"><span class="jp-GPUQueue-gpu" data-state="down"></span> not answering</span>` : '') +
    '</div>';
  return `<div class="jp-GPUQueue-cluster">${pools.join('')}${nodes.length ? legend : ''}</div>`;
}

/** My fair-share standing, in words. */
export function shareView(q: IQueue): string {
  const s = q.share;
  if (!s) {
    return '<p class="jp-GPUQueue-empty">this queue does not use fair share (first come, first served)</p>';
  }
  const halfLife = s.half_life_s ? ` <span class="jp-GPUQueue-hint">(halves every ${span(s.half_life_s)})</span>` : '';
  const now = s.running
    ? `${count(s.running, 'job')} on ${count(s.gpus_held, 'GPU')}`
    : 'nothing running';
  const rows: [string, string, string][] = [
    ['usage', 'Your recent use', `<span class="jp-GPUQueue-nowrap">${gpuHours(s.usage_gpu_hours)}</span>${halfLife}`],
    ['weight', 'Your weight', `<span class="jp-GPUQueue-nowrap">${s.weight}</span>`],
    [
      'place',
      'Your turn',
      `<span class="jp-GPUQueue-nowrap">${ordinal(s.place)} of ${count(s.of, 'user')}</span>`
    ],
    ['now', 'Now', `<span class="jp-GPUQueue-nowrap">${esc(now)}</span>`]
  ];
  return (
    `<dl class="jp-GPUQueue-share">${rows
      .map(([k, label, value]) => `<dt>${label}</dt><dd data-share="${k}">${value}</dd>`)
      .join('')}</dl>` +
    '<p class="jp-GPUQueue-hint">Among jobs of the same priority, the user who has used the least ' +
    '(GPU-hours divided by weight) goes first.</p>'
  );
}
