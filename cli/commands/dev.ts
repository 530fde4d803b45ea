export const summary = 'run the whole stack locally (demo model, two sidecars, wrangler dev)';
export async function run(): Promise<number> {
  console.error('sirocco dev: not built yet');
  return 1;
}
