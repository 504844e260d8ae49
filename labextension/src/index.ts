/**
 * jupyter-gpuqueue's JupyterLab extension: the "GPU Queue" left-panel tab.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette } from '@jupyterlab/apputils';
import { ISettingRegistry } from '@jupyterlab/settingregistry';
import { LabIcon } from '@jupyterlab/ui-components';

import { GPUQueueAPI } from './api';
import { DEFAULT_SETTINGS, GPUQueuePanel, ISidebarSettings } from './panel';

const PLUGIN_ID = 'jupyter-gpuqueue:plugin';
const OPEN_COMMAND = 'gpuqueue:open';

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
  description: 'The GPU Queue sidebar: pools, my jobs, the queue, fair share, cancel.',
  autoStart: true,
  optional: [ISettingRegistry, ILayoutRestorer, ICommandPalette],
  activate: (
    app: JupyterFrontEnd,
    settingRegistry: ISettingRegistry | null,
    restorer: ILayoutRestorer | null,
    palette: ICommandPalette | null
  ) => {
    const panel = new GPUQueuePanel(new GPUQueueAPI());
    panel.title.icon = gpuQueueIcon;
    app.shell.add(panel, 'left', { rank: 800 });
    if (restorer) {
      restorer.add(panel, 'gpuqueue-sidebar');
    }
    app.commands.addCommand(OPEN_COMMAND, {
      label: 'Show the GPU Queue',
      execute: () => app.shell.activateById(panel.id)
    });
    if (palette) {
      palette.addItem({ command: OPEN_COMMAND, category: 'GPU Queue' });
    }
    if (settingRegistry) {
      settingRegistry
        .load(PLUGIN_ID)
        .then(settings => {
          const apply = () =>
            panel.configure({
              ...DEFAULT_SETTINGS,
              ...(settings.composite as unknown as Partial<ISidebarSettings>)
            });
          settings.changed.connect(apply);
          apply();
        })
        .catch(reason => {
          console.error('jupyter-gpuqueue: cannot load settings', reason);
        });
    }
    void panel.start();
  }
};

export default plugin;
