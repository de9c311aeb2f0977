// Validates custom resources (Argo Rollouts and CD, prometheus-operator, KEDA) in a multi-document
// YAML files against the @kubernetes-models CRD models: wrong types and missing required fields fail.
//   node scripts/ops/validate-crds.mjs NODE_MODULES FILE.yaml...
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { pathToFileURL } from "node:url";

const [modules, ...files] = process.argv.slice(2);
if (!modules || files.length === 0) {
  console.error("usage: validate-crds.mjs NODE_MODULES FILE.yaml...");
  process.exit(2);
}
const load = async (relative) => import(pathToFileURL(join(modules, relative)).href);
const yamlModule = await load("js-yaml/dist/js-yaml.mjs");
const yaml = yamlModule.default ?? yamlModule;

// apiVersion/kind -> the model's module.
const models = {
  "argoproj.io/v1alpha1/Rollout": "@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1/Rollout.js",
  "argoproj.io/v1alpha1/AnalysisTemplate": "@kubernetes-models/argo-rollouts/argoproj.io/v1alpha1/AnalysisTemplate.js",
  "argoproj.io/v1alpha1/Application": "@kubernetes-models/argo-cd/argoproj.io/v1alpha1/Application.js",
  "argoproj.io/v1alpha1/AppProject": "@kubernetes-models/argo-cd/argoproj.io/v1alpha1/AppProject.js",
  "monitoring.coreos.com/v1/ServiceMonitor": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor.js",
  "monitoring.coreos.com/v1/PrometheusRule": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule.js",
  "keda.sh/v1alpha1/ScaledObject": "@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject.mjs",
  "keda.sh/v1alpha1/TriggerAuthentication": "@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication.mjs",
};

const docs = files.flatMap((file) => yaml.loadAll(readFileSync(file, "utf8")).filter(Boolean));
let failures = 0;
for (const doc of docs) {
  const key = `${doc.apiVersion}/${doc.kind}`;
  const name = `${doc.kind} ${doc.metadata?.name ?? "(no name)"}`;
  const path = models[key];
  if (!path) {
    console.error(`FAIL ${name}: no model for ${key}`);
    failures++;
    continue;
  }
  const module = await load(path);
  const Model = module[doc.kind] ?? module.default;
  try {
    new Model(doc).validate();
    console.log(`ok   ${name}`);
  } catch (error) {
    console.error(`FAIL ${name}: ${error.message}`);
    for (const detail of error.errors ?? []) {
      console.error(`     ${detail.instancePath ?? ""} ${detail.message ?? JSON.stringify(detail)}`);
    }
    failures++;
  }
}
console.log(`${docs.length} object(s), ${failures} invalid`);
process.exit(failures ? 1 : 0);
