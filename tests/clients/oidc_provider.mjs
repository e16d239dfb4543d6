// A real, certified OpenID provider (npm oidc-provider) on a loopback port, for the
// sign-in tests: its own login pages (devInteractions: any password), the
// authorization code flow with PKCE required, and the device grant.
//
// argv[2]: JSON {clients: [...], accounts: {login: claims}, idTokenSeconds?}
// Prints {"port": N} once listening; the issuer is http://127.0.0.1:N.
import http from "node:http";
import Provider from "oidc-provider";

const settings = JSON.parse(process.argv[2]);
const server = http.createServer();
server.listen(0, "127.0.0.1", () => {
  const { port } = server.address();
  const provider = new Provider(`http://127.0.0.1:${port}`, {
    clients: settings.clients,
    claims: {
      openid: ["sub"],
      email: ["email", "email_verified"],
      profile: ["name"],
      lmgate: ["role", "team"],
    },
    scopes: ["openid", "offline_access", "email", "profile", "lmgate"],
    conformIdTokenClaims: false, // the claims asked for go in the ID token too
    pkce: { required: () => true },
    features: {
      devInteractions: { enabled: true },
      deviceFlow: { enabled: true },
    },
    ttl: {
      IdToken: settings.idTokenSeconds || 3600,
      DeviceCode: 600,
      AccessToken: 3600,
      AuthorizationCode: 60,
      Grant: 3600,
      Interaction: 600,
      Session: 3600,
    },
    cookies: { keys: ["test-only-cookie-key"] },
    async findAccount(ctx, id) {
      const claims = settings.accounts[id];
      if (!claims) return undefined;
      return { accountId: id, claims: async () => ({ sub: id, ...claims }) };
    },
    // A first-party client: no consent page; the grant covers what was asked.
    async loadExistingGrant(ctx) {
      const grant = new ctx.oidc.provider.Grant({
        clientId: ctx.oidc.client.clientId,
        accountId: ctx.oidc.session.accountId,
      });
      grant.addOIDCScope(ctx.oidc.requestParamScopes ? [...ctx.oidc.requestParamScopes].join(" ") : "openid");
      grant.addOIDCClaims(["email", "email_verified", "name", "role", "team"]);
      await grant.save();
      return grant;
    },
  });
  server.on("request", provider.callback());
  process.stdout.write(JSON.stringify({ port }) + "\n");
});
