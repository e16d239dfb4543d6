"""What the tests share: the gateway run on a loopback port, fake upstreams, real
servers (PostgreSQL, Redis), and small helpers. Test files import from here, never
from each other."""
