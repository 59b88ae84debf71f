"""The operator console: a web page, served by the learner process, where people watch the fleet, take over
a robot, drive it from the keyboard, hand it back and label outcomes.

    accounts.py   operator accounts (scrypt-hashed passwords, roles viewer/operator/admin); `sop console`
    sessions.py   login sessions (HttpOnly cookie) and their CSRF tokens
    leases.py     one operator per robot at a time
    commands.py   the page's WebSocket messages: parsed, checked, leased, logged, relayed to the robot
    views.py      what the page shows (fleet, watched robot, learner) as JSON
    server.py     FastAPI + uvicorn, embedded in `sop learner serve` when console.address is set
    static/       the page itself: plain HTML, JavaScript and CSS, no build step, nothing from a CDN

Commands reach robots through the learner's `OperatorRelay` (cloud_learner/operator_relay.py), the same
path as every other operator.
"""
