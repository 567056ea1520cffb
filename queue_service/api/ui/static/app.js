// The queue-service dashboard. It reads the JSON API with the operator's bearer token, kept
// in sessionStorage, and builds the page from text nodes only: no markup is ever made from
// data, and the Content-Security-Policy of /ui allows no inline script or style anyway.
'use strict';

(function () {
  const TOKEN_KEY = 'queue-service.token';
  /** The GET /jobs filters, in the order the form shows them. */
  const FILTERS = ['plugin', 'command', 'status', 'source', 'created_after', 'created_before'];
  const PAGE_SIZE = 50;
  const REFRESH_MS = 5000;
  const ACTIVE = ['queued', 'running'];
  const FAILED = ['failed', 'timed_out', 'dead'];
  const number = new Intl.NumberFormat('en');

  const $ = (id) => document.getElementById(id);

  // -- building the page -------------------------------------------------------------

  /** An element whose children are nodes or text (strings become text nodes, never markup). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined && value !== false) {
        node.setAttribute(name, value === true ? '' : String(value));
      }
    }
    for (const child of children) {
      if (child !== null && child !== undefined) {
        node.append(child instanceof Node ? child : String(child));
      }
    }
    return node;
  }

  function badge(word) {
    return el('span', { class: 'badge st-' + String(word).replace(/[^a-z_]/g, '') }, word);
  }

  function hashLink(params, text, attrs) {
    return el('a', Object.assign({ href: '#' + new URLSearchParams(params) }, attrs || {}), text);
  }

  function jobLink(jobId) {
    return hashLink({ job: jobId }, jobId, { class: 'id' });
  }

  /** A link out of the page, only for http(s) URLs. */
  function externalLink(url, text) {
    if (typeof url !== 'string' || !/^https?:\/\//i.test(url)) return text || '';
    return el('a', { href: url, rel: 'noopener noreferrer', target: '_blank' }, text || url);
  }

  /** "2026-12-02T21:05:12.123456Z" as "2026-12-02 21:05:12"; the full text is the title. */
  function time(ts) {
    return typeof ts === 'string' ? ts.slice(0, 19).replace('T', ' ') : '—';
  }

  /** To the millisecond, for one job's own times. */
  function precise(ts) {
    return typeof ts === 'string' ? ts.slice(0, 23).replace('T', ' ') + ' UTC' : null;
  }

  function timeCell(ts) {
    return el('td', { class: 'ts', title: ts || null }, time(ts));
  }

  function millis(ts) {
    // Stored times have six fraction digits; Date.parse is only specified for three.
    return Date.parse(ts.slice(0, 23) + 'Z');
  }

  function duration(started, completed) {
    if (typeof started !== 'string') return '';
    const ms = (typeof completed === 'string' ? millis(completed) : Date.now()) - millis(started);
    if (!(ms >= 0)) return '';
    if (ms < 1000) return ms + ' ms';
    if (ms < 60000) return (ms / 1000).toFixed(1) + ' s';
    const s = Math.floor(ms / 1000);
    if (s < 3600) return Math.floor(s / 60) + 'm ' + String(s % 60).padStart(2, '0') + 's';
    return Math.floor(s / 3600) + 'h ' + String(Math.floor(s / 60) % 60).padStart(2, '0') + 'm';
  }

  function json(value) {
    return value === null || value === undefined ? '—' : JSON.stringify(value, null, 2);
  }

  function replaceRows(tbody, rows) {
    tbody.replaceChildren(...rows);
  }

  function note(id, text) {
    const node = $(id);
    node.textContent = text || '';
    node.hidden = !text;
  }

  // -- the token ----------------------------------------------------------------------

  let token = sessionStorage.getItem(TOKEN_KEY) || '';

  function setToken(value) {
    token = value;
    if (value) sessionStorage.setItem(TOKEN_KEY, value);
    else sessionStorage.removeItem(TOKEN_KEY);
    $('token-state').textContent = value ? 'token set for this tab' : 'no token';
    $('token-input').value = '';
  }

  /** `#token=…` in the address: keep the token, then take it out of the address bar. */
  function takeTokenFromFragment() {
    const params = new URLSearchParams(location.hash.slice(1));
    if (!params.has('token')) return;
    const value = params.get('token').trim();
    params.delete('token');
    const rest = params.toString();
    history.replaceState(null, '', location.pathname + location.search + (rest ? '#' + rest : ''));
    if (value) setToken(value);
  }

  // -- the API ------------------------------------------------------------------------

  class ApiFailure extends Error {
    constructor(status, body) {
      super(body.error);
      this.status = status;
      this.body = body;
    }
  }

  /** GET a JSON API path with the bearer header (the token never goes in a URL). */
  async function api(path, { auth = true } = {}) {
    if (auth && !token) {
      throw new ApiFailure(0, { code: 'no_token', error: 'paste a token to read the API' });
    }
    const headers = { Accept: 'application/json' };
    if (auth) headers.Authorization = 'Bearer ' + token;
    let response;
    try {
      response = await fetch(path, { headers, cache: 'no-store', credentials: 'omit' });
    } catch (error) {
      throw new ApiFailure(0, { code: 'unreachable', error: 'no answer: ' + error.message });
    }
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    if (!response.ok) {
      const fallback = { code: 'http_' + response.status, error: response.statusText };
      throw new ApiFailure(response.status, body && body.error ? body : fallback);
    }
    return body;
  }

  function describe(failure) {
    if (!(failure instanceof ApiFailure)) return String(failure);
    const body = failure.body;
    let text = body.error;
    if (failure.status === 401) text = 'The token was refused (' + body.code + '): ' + body.error;
    else if (failure.status === 403) text = 'Not allowed for this token: ' + body.error;
    else if (failure.status) text = failure.status + ' ' + body.code + ': ' + body.error;
    if (Array.isArray(body.allowed) && body.allowed.length) {
      text += ' (allowed: ' + body.allowed.join(', ') + ')';
    }
    return text;
  }

  function showNotice(failure) {
    const notice = $('notice');
    notice.textContent = failure ? describe(failure) : '';
    notice.className = failure && failure.status === 401 ? 'auth' : '';
    notice.hidden = !failure;
  }

  // -- the vocabulary, from the public OpenAPI document --------------------------------

  let statuses = [];

  async function loadVocabulary() {
    try {
      const schemas = (await api('/openapi.json', { auth: false })).components.schemas;
      statuses = schemas.Status.enum;
      $('status-words').replaceChildren(...statuses.map((s) => el('option', { value: s })));
      const source = document.querySelector('#filters [name=source]');
      source.append(...schemas.Source.enum.map((s) => el('option', { value: s }, s)));
      fillFilterForm();
    } catch (failure) {
      statuses = [];
    }
  }

  // -- where we are: the fragment ------------------------------------------------------

  function fragment() {
    return new URLSearchParams(location.hash.slice(1));
  }

  function currentView() {
    const params = fragment();
    if (params.get('job')) return 'job';
    return params.get('view') === 'plugins' ? 'plugins' : 'jobs';
  }

  function filtersFromFragment() {
    const params = fragment();
    const filters = {};
    for (const name of FILTERS) {
      const value = (params.get(name) || '').trim();
      if (value) filters[name] = value;
    }
    return filters;
  }

  function go(params) {
    const next = params.toString();
    if (location.hash.slice(1) === next) render(true);
    else location.hash = next;
  }

  // -- the jobs view ------------------------------------------------------------------

  const paging = { key: null, cursors: [null], index: 0, next: null };
  let jobsHash = '';
  let shownPage = '';

  function fillFilterForm() {
    const form = $('filters');
    const filters = filtersFromFragment();
    const source = form.elements.source;
    if (filters.source && ![...source.options].some((o) => o.value === filters.source)) {
      source.append(el('option', { value: filters.source }, filters.source)); // the server judges it
    }
    for (const name of FILTERS) {
      form.elements[name].value = filters[name] || '';
      form.elements[name].classList.remove('invalid');
    }
  }

  function jobRow(job) {
    return el(
      'tr',
      { 'data-job-id': job.job_id, 'data-status': job.status },
      el('td', {}, badge(job.status)),
      el('td', {}, jobLink(job.job_id)),
      el('td', {}, job.plugin),
      el('td', {}, job.command),
      el('td', {}, job.source === 'databricks' ? externalLink(job.external_url, job.source) : job.source),
      el('td', { class: 'num' }, job.attempt),
      timeCell(job.created_at),
      timeCell(job.started_at),
      el('td', { class: 'num' }, duration(job.started_at, job.completed_at)),
    );
  }

  function clearJobs(totalText) {
    shownPage = '';
    replaceRows($('jobs-rows'), []);
    $('jobs-total').textContent = totalText;
    $('page-label').textContent = '';
    $('jobs-empty').hidden = true;
    $('page-newer').disabled = true;
    $('page-older').disabled = true;
  }

  /** The page size: `limit` in the fragment (the server checks it), else PAGE_SIZE. */
  function pageSize() {
    return (fragment().get('limit') || '').trim() || String(PAGE_SIZE);
  }

  async function loadJobs(isCurrent) {
    const filters = filtersFromFragment();
    const limit = pageSize();
    const key = JSON.stringify([filters, limit]);
    if (paging.key !== key) Object.assign(paging, { key, cursors: [null], index: 0, next: null });
    const query = new URLSearchParams(filters);
    query.set('limit', limit);
    const cursor = paging.cursors[paging.index];
    if (cursor) query.set('cursor', cursor);
    let page;
    try {
      page = await api('/jobs?' + query);
    } catch (failure) {
      if (!isCurrent()) return;
      clearJobs('—');
      showNotice(failure);
      const param = failure.body && failure.body.param;
      const input = param && $('filters').elements[param];
      if (input) input.classList.add('invalid');
      return;
    }
    if (!isCurrent()) return;
    showNotice(null);
    paging.next = page.next_cursor;
    const text = paging.index + JSON.stringify(page);
    // Unchanged (and no running job whose duration grows): keep the reader's selection.
    if (text === shownPage && !page.jobs.some((job) => job.status === 'running')) return;
    shownPage = text;
    replaceRows($('jobs-rows'), page.jobs.map(jobRow));
    const first = paging.index * Number(limit);
    $('jobs-total').textContent = number.format(page.total) + (page.total === 1 ? ' job' : ' jobs');
    $('page-label').textContent = page.jobs.length
      ? number.format(first + 1) + '–' + number.format(first + page.jobs.length)
      : '';
    $('jobs-empty').hidden = page.jobs.length > 0;
    $('page-newer').disabled = paging.index === 0;
    $('page-older').disabled = !page.next_cursor;
  }

  // -- the job view -------------------------------------------------------------------

  function field(list, name, value) {
    list.append(el('dt', {}, name), el('dd', {}, value === null || value === undefined ? '—' : value));
  }

  function logText(entries) {
    if (!Array.isArray(entries) || !entries.length) return '—';
    return entries
      .map((entry) => {
        if (entry && typeof entry === 'object' && typeof entry.message === 'string') {
          return (entry.level ? String(entry.level).toUpperCase() + ' ' : '') + entry.message;
        }
        return JSON.stringify(entry);
      })
      .join('\n');
  }

  function attemptRows(attempts) {
    const rows = [];
    for (const attempt of attempts) {
      rows.push(
        el(
          'tr',
          { 'data-attempt': attempt.attempt },
          el('td', { class: 'num' }, attempt.attempt),
          el('td', {}, badge(attempt.status)),
          timeCell(attempt.started_at),
          timeCell(attempt.completed_at),
          el('td', { class: 'num' }, duration(attempt.started_at, attempt.completed_at)),
          el('td', { class: 'num' }, attempt.exit_code === null ? '—' : attempt.exit_code),
          el('td', { class: 'error' }, attempt.error || ''),
        ),
      );
      if (attempt.stderr_tail) {
        rows.push(
          el(
            'tr',
            { class: 'stderr' },
            el('td', {}, ''),
            el('td', { colspan: 6 }, el('div', { class: 'label' }, 'stderr (tail)'), el('pre', {}, attempt.stderr_tail)),
          ),
        );
      }
    }
    return rows;
  }

  function renderJob(job, scopeNote) {
    $('job-status').replaceChildren(badge(job.status));
    $('job-id').textContent = job.job_id;
    const fields = $('job-fields');
    fields.replaceChildren();
    field(fields, 'plugin', job.plugin);
    field(fields, 'command', job.command);
    field(fields, 'source', job.source);
    field(fields, 'attempt', job.max_attempts ? job.attempt + ' of ' + job.max_attempts : job.attempt);
    field(fields, 'created', precise(job.created_at));
    field(fields, 'started', precise(job.started_at));
    field(fields, 'completed', precise(job.completed_at));
    field(fields, 'duration', duration(job.started_at, job.completed_at) || null);
    if ('submitted_by' in job) field(fields, 'submitted by', job.submitted_by);
    if (job.external_url) field(fields, 'external run', externalLink(job.external_url));
    const detailed = Array.isArray(job.attempts);
    note('job-scope-note', scopeNote || null);
    $('job-detail').hidden = !detailed;
    if (!detailed) return;
    $('job-payload').textContent = json(job.payload);
    $('job-result').textContent = json(job.result);
    $('job-last-error').textContent = job.last_error || '—';
    replaceRows($('job-attempts'), attemptRows(job.attempts));
    $('job-logs').textContent = logText(job.logs);
    $('job-events').textContent = Array.isArray(job.events) && job.events.length
      ? job.events.map((event) => JSON.stringify(event)).join('\n')
      : '—';
  }

  let shownJob = '';

  async function loadJob(jobId, isCurrent) {
    $('job-back').setAttribute('href', '#' + jobsHash);
    let job;
    try {
      job = await api('/job/' + encodeURIComponent(jobId));
    } catch (failure) {
      if (!isCurrent()) return;
      shownJob = '';
      showNotice(failure);
      renderJob({ job_id: jobId, status: failure.status === 404 ? 'not found' : 'unknown' }, null);
      $('job-fields').replaceChildren();
      return;
    }
    if (!isCurrent()) return;
    showNotice(null);
    const text = JSON.stringify(job);
    if (text === shownJob) return; // unchanged: keep the reader's selection and scroll
    shownJob = text;
    renderJob(
      job,
      Array.isArray(job.attempts)
        ? null
        : 'This token sees the status view only; payload, result, logs, events and ' +
            'attempts need the scope jobs:ro.',
    );
  }

  // -- the plugins view ---------------------------------------------------------------

  async function total(params) {
    const query = new URLSearchParams(params);
    query.set('limit', '1');
    return (await api('/jobs?' + query)).total;
  }

  function countLink(params, count) {
    return hashLink(params, number.format(count), { class: count ? 'count' : 'count zero' });
  }

  async function loadQueue() {
    const [health, ...counts] = await Promise.allSettled([
      api('/healthz', { auth: false }),
      ...statuses.map((status) => total({ status })),
    ]);
    const summary = [];
    if (health.status === 'fulfilled') {
      summary.push(
        el('span', { class: 'stat' }, el('span', { class: 'label' }, 'queue depth'),
          el('strong', { id: 'queue-depth' }, number.format(health.value.queue_depth))),
        el('span', { class: 'stat' }, el('span', { class: 'label' }, 'version'), health.value.version),
      );
      if (!health.value.writable) summary.push(el('span', { class: 'badge st-failed' }, 'read-only'));
      for (const warning of health.value.warnings || []) summary.push(el('span', { class: 'warning' }, warning));
    }
    const byStatus = el('span', { class: 'stat', id: 'status-counts' });
    statuses.forEach((status, index) => {
      const count = counts[index];
      byStatus.append(
        el(
          'span',
          { class: 'chip', 'data-status': status },
          badge(status),
          count.status === 'fulfilled' ? countLink({ status }, count.value) : '?',
        ),
      );
    });
    summary.push(byStatus);
    const refused = counts.find((c) => c.status === 'rejected');
    if (refused) summary.push(el('span', { class: 'note' }, 'counts: ' + describe(refused.reason)));
    return summary;
  }

  async function pluginRow(plugin) {
    const [active, failed] = await Promise.allSettled([
      total({ plugin: plugin.name, status: ACTIVE.join(',') }),
      total({ plugin: plugin.name, status: FAILED.join(',') }),
    ]);
    const commands = el('span', { class: 'commands' });
    for (const command of plugin.commands) {
      commands.append(
        el('span', { class: 'command', title: command.description || null }, command.name,
          el('span', { class: 'kind' }, command.type)),
      );
    }
    return el(
      'tr',
      { 'data-plugin': plugin.name },
      el('td', {}, hashLink({ plugin: plugin.name }, plugin.name, { class: 'mono' })),
      el('td', { class: 'mono' }, plugin.version || '—'),
      el('td', { title: plugin.error || null }, badge(plugin.valid ? 'valid' : 'invalid'),
        plugin.error ? el('span', { class: 'error' }, ' ' + plugin.error) : null),
      el('td', { class: 'num' }, active.status === 'fulfilled'
        ? countLink({ plugin: plugin.name, status: ACTIVE.join(',') }, active.value) : '?'),
      el('td', { class: 'num' }, failed.status === 'fulfilled'
        ? countLink({ plugin: plugin.name, status: FAILED.join(',') }, failed.value) : '?'),
      el('td', {}, commands),
    );
  }

  function scheduleRow(s) {
    const timetable = s.every ? 'every ' + s.every : s.cron + (s.timezone ? ' (' + s.timezone + ')' : '');
    return el(
      'tr',
      { 'data-schedule': s.plugin + ':' + s.schedule_id },
      el('td', { class: 'mono' }, s.plugin + ':' + s.schedule_id),
      el('td', {}, s.command),
      el('td', { class: 'mono' }, timetable),
      el('td', {}, s.if_running),
      el('td', {}, s.catch_up),
      timeCell(s.next_run_at),
      timeCell(s.last_fired_at),
      el('td', {}, s.last_job_id ? badge(s.last_job_status || 'pruned') : '—', ' ',
        s.last_job_id ? jobLink(s.last_job_id) : null),
    );
  }

  function syncRow(w) {
    return el(
      'tr',
      { 'data-workspace': w.workspace },
      el('td', { class: 'mono' }, w.workspace),
      el('td', { class: 'mono' }, w.host || '—'),
      el('td', {}, badge(w.state)),
      timeCell(w.last_success_at),
      el('td', { class: 'num' }, w.consecutive_failures),
      timeCell(w.next_attempt_at),
      el('td', { class: 'num' }, number.format(w.runs_ingested)),
      el('td', { class: 'error', title: w.last_error_at || null }, w.last_error || ''),
    );
  }

  async function loadPlugins(isCurrent) {
    const [queue, plugins, schedules, sync] = await Promise.allSettled([
      loadQueue(),
      api('/plugins').then(async (body) => ({ body, rows: await Promise.all(body.plugins.map(pluginRow)) })),
      api('/schedules'),
      api('/sync'),
    ]);
    if (!isCurrent()) return;
    showNotice(plugins.status === 'rejected' && plugins.reason.status === 401 ? plugins.reason : null);
    $('queue-summary').replaceChildren(...(queue.status === 'fulfilled' ? queue.value : []));
    if (plugins.status === 'fulfilled') {
      note('plugins-error', plugins.value.rows.length ? null : 'No plugin is installed.');
      replaceRows($('plugins-rows'), plugins.value.rows);
      const missing = plugins.value.body.missing;
      note('plugins-missing', missing.length
        ? 'Queued jobs name plugins that are not installed: ' +
            missing.map((m) => m.name + ' (' + m.queued_jobs + ')').join(', ')
        : null);
    } else {
      note('plugins-error', describe(plugins.reason));
      replaceRows($('plugins-rows'), []);
      note('plugins-missing', null);
    }
    if (schedules.status === 'fulfilled') {
      note('schedules-error', schedules.value.schedules.length ? null : 'No schedule is configured.');
      replaceRows($('schedules-rows'), schedules.value.schedules.map(scheduleRow));
    } else {
      note('schedules-error', describe(schedules.reason));
      replaceRows($('schedules-rows'), []);
    }
    if (sync.status === 'fulfilled') {
      const body = sync.value;
      note('sync-error', body.workspaces.length ? null
        : body.enabled ? 'No workspace has synced yet.' : 'The Databricks sync is not configured.');
      replaceRows($('sync-rows'), body.workspaces.map(syncRow));
    } else {
      note('sync-error', describe(sync.reason));
      replaceRows($('sync-rows'), []);
    }
  }

  // -- rendering and refreshing -------------------------------------------------------

  let generation = 0;
  let paused = false;
  let timer = null;

  /** Show the view the fragment names; `fresh` when the fragment (not the clock) changed. */
  async function render(fresh) {
    const mine = ++generation;
    const isCurrent = () => mine === generation;
    const view = currentView();
    for (const name of ['jobs', 'job', 'plugins']) $('view-' + name).hidden = name !== view;
    $('nav-jobs').classList.toggle('active', view !== 'plugins');
    $('nav-plugins').classList.toggle('active', view === 'plugins');
    $('nav-jobs').setAttribute('href', '#' + jobsHash);
    if (fresh) {
      window.clearTimeout(timer);
      if (view === 'jobs') fillFilterForm();
      if (view === 'job') shownJob = '';
    }
    if (!token) {
      showNotice(new ApiFailure(0, { code: 'no_token', error: 'Paste a token (qs_…) above to see the queue.' }));
      if (view === 'jobs') clearJobs('');
      return;
    }
    if (view === 'jobs') await loadJobs(isCurrent);
    else if (view === 'job') await loadJob(fragment().get('job'), isCurrent);
    else await loadPlugins(isCurrent);
    if (!isCurrent()) return;
    $('updated').textContent = 'updated ' + new Date().toISOString().slice(11, 19) + ' UTC';
    schedule();
  }

  function schedule() {
    window.clearTimeout(timer);
    if (!paused) timer = window.setTimeout(() => (document.hidden ? schedule() : render(false)), REFRESH_MS);
  }

  function onFragmentChange() {
    takeTokenFromFragment();
    if (currentView() === 'jobs') jobsHash = location.hash.slice(1);
    render(true);
  }

  // -- wiring -------------------------------------------------------------------------

  function start() {
    takeTokenFromFragment();
    setToken(token);
    if (currentView() === 'jobs') jobsHash = location.hash.slice(1);
    window.addEventListener('hashchange', onFragmentChange);

    $('token-form').addEventListener('submit', (event) => {
      event.preventDefault();
      const value = $('token-input').value.trim();
      if (value) {
        setToken(value);
        render(true);
      }
    });
    $('token-forget').addEventListener('click', () => {
      setToken('');
      render(true);
    });
    $('refresh-toggle').addEventListener('click', () => {
      paused = !paused;
      $('refresh-toggle').textContent = paused ? 'Resume auto-refresh' : 'Pause auto-refresh';
      $('refresh-toggle').setAttribute('aria-pressed', String(paused));
      if (paused) window.clearTimeout(timer);
      else render(false);
    });
    $('filters').addEventListener('submit', (event) => {
      event.preventDefault();
      const params = new URLSearchParams();
      if (fragment().has('limit')) params.set('limit', pageSize());
      for (const name of FILTERS) {
        const value = event.target.elements[name].value.trim();
        if (value) params.set(name, value);
      }
      go(params);
    });
    $('filters-clear').addEventListener('click', () => go(new URLSearchParams()));
    $('page-older').addEventListener('click', () => {
      if (!paging.next) return;
      paging.cursors[paging.index + 1] = paging.next;
      paging.index += 1;
      render(false);
    });
    $('page-newer').addEventListener('click', () => {
      if (paging.index === 0) return;
      paging.index -= 1;
      render(false);
    });

    loadVocabulary().finally(() => render(true));
  }

  start();
})();
