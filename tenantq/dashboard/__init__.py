"""Tenant dashboard (``/dashboard``) and operator dashboard (``/admin``).

Server-rendered Jinja2 page shells plus one small vanilla JavaScript file (``static/dashboard.js``)
that calls the public JSON API with the session cookie and renders (and polls) the data. The pages
depend only on the HTTP contracts, never on other areas' Python code, so the browser sees exactly what
any API client sees. See ``docs/dashboard.md``.
"""
