/**
 * jupyter-gpuqueue's JupyterLab extension: the "GPU Queue" left-panel tab, and a notification
 * when one of my jobs ends (watcher.ts), wherever I am in JupyterLab.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { Clipboard, ICommandPalette, Notification } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import { GPUQueueAPI } from './api';
import { DEFAULT_SETTINGS, GPUQueuePanel, ISidebarSettings } from './panel';
import {
  DEFAULT_WATCHER_SETTINGS,
  IJobEnd,
  IWatcherSettings,
  JobWatcher,
  endKind,
  endMessage
} from './watcher';

const PLUGIN_ID = 'jupyter-gpuqueue:plugin';
const OPEN_COMMAND = 'gpuqueue:open';
const NOTIFY_COMMAND = 'gpuqueue:toggle-notify-on-job-end';
/** What the server emits on Jupyter's event bus when a job is submitted through it
 * (jupyter_gpuqueue/handlers.py). */
const JOB_EVENT = 'https://github.com/jupyter-gpuqueue/events/job-submitted/v1';

/** A GPU card with a queue of three bars. */
export const gpuQueueIcon = new LabIcon({
  name: 'jupyter-gpuqueue:icon',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" viewBox="0 0 24 24">' +
    '<g class="jp-icon3" fill="#616161">' +
    '<path d="M2 6h16v10H2zM4 8v6h12V8zM18 9h3v4h-3zM4 17h2v2H4zM8 17h2v2H8z"/>' +
    '<rect x="6" y="9.5" width="8" height="1"/><rect x="6" y="11.5" width="6" height="1"/>' +
    '</g></svg>'
});

const plugin: JupyterFrontEndPlugin<void> = {
  id: PLUGIN_ID,
  description:
    'The GPU Queue sidebar (pools, my jobs, the queue, fair share, cancel, delete finished jobs) and job-end notifications.',
  autoStart: true,
  optional: [ISettingRegistry, ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    settingRegistry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const api = new GPUQueueAPI();
    const panel = new GPUQueuePanel(api);
    panel.title.icon = gpuQueueIcon;
    app.shell.add(panel, 'left', { rank: 800 });
    if (restorer) {
      restorer.add(panel, 'gpuqueue-sidebar');
    }
    app.commands.addCommand(OPEN_COMMAND, {
      label: 'Show the GPU Queue',
      execute: () => app.shell.activateById(panel.id)
    });
    const watcher = new JobWatcher(api, end => showJobEnd(app, end));
    panel.onRefreshed = (queue, jobs) => watcher.observe(queue, jobs);
    app.serviceManager.events.stream.connect((_, event) => {
      if (event.schema_id === JOB_EVENT) {
        watcher.check();
      }
    });
    let settings: ISettingRegistry.ISettings | null = null;
    app.commands.addCommand(NOTIFY_COMMAND, {
      label: 'Notify When My Jobs End',
      isToggled: () => watcher.settings.notifyOnJobEnd,
      execute: () => {
        const on = !watcher.settings.notifyOnJobEnd;
        return settings
          ? settings.set('notifyOnJobEnd', on)
          : watcher.configure({ notifyOnJobEnd: on });
      }
    });
    if (palette) {
      palette.addItem({ command: OPEN_COMMAND, category: 'GPU Queue' });
      palette.addItem({ command: NOTIFY_COMMAND, category: 'GPU Queue' });
    }
    const loaded = settingRegistry
      ? settingRegistry.load(PLUGIN_ID).then(
          values => {
            settings = values;
            const apply = () => {
              const composite = values.composite as unknown as Partial<
                ISidebarSettings & IWatcherSettings
              >;
              panel.configure({ ...DEFAULT_SETTINGS, ...composite });
              watcher.configure({ ...DEFAULT_WATCHER_SETTINGS, ...composite });
              app.commands.notifyCommandChanged(NOTIFY_COMMAND);
            };
            values.changed.connect(apply);
            apply();
          },
          reason => console.error('jupyter-gpuqueue: cannot load settings', reason)
        )
      : Promise.resolve();
    void panel.start();
    void loaded.then(() => watcher.start());
  }
};

/** The notification for a job's end, with "Show the GPU Queue" and "Copy attach command". */
function showJobEnd(app: JupyterFrontEnd, end: IJobEnd): void {
  const kind = endKind(end.job.state);
  Notification.emit(endMessage(end), kind, {
    autoClose: kind === 'error' ? false : 10 * 1000,
    actions: [
      { label: 'Show the GPU Queue', callback: () => void app.commands.execute(OPEN_COMMAND) },
      {
        label: 'Copy attach command',
        caption: `Copy %gpuqueue attach ${end.job.id} (its output and results in a notebook)`,
        callback: () => Clipboard.copyToSystem(`%gpuqueue attach ${end.job.id}`)
      }
    ]
  });
}

export default plugin;
