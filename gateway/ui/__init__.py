"""The web view at /ui: a fleet grid, a page per GPU with plots, and the pipeline's state.

The pages are Flask templates; their data come from the public REST API (/api/v1/…) and, for
the pipeline page, from the broker's Admin API read calls relayed as JSON by `ui.pipeline` (the
same documents `walbroker admin --json` prints), fetched by the page's own scripts. So the view
shows nothing a user could not get with curl. Plots use uPlot, vendored under static/vendor with
its licence; a Content-Security-Policy of 'self' keeps every page off the network beyond this
gateway.
"""
