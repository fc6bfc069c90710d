"""bootembed's serving layer: `serve.app.build_app` is the one import path of the Serve application."""
