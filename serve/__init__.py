"""bootembed's serving layer: `serve.app.build_app(serve.args.AppArgs(...))` is the one import path of the Serve
application (also for Ray's `serve run` / `serve deploy`: configs/serve.yaml); the underscore modules are its internals."""
